"""The network: a frozen timm backbone (BatchNorm statistics included), a small trainable head, the buffers fitted
after training (operating point, not-an-X-ray guard), its forward passes, and save / load.

What is done with its outputs (calibration, decision, guard, heatmap) is serving/predictor.py's Predictor, which
holds a model. Loading by name or path is serving/loading.py; the Hub's formats are serving/hub_format.py.
"""

import importlib
import json
import shutil
from pathlib import Path

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from torch import nn

from .guard import GUARD_STAGES, stage_statistics
from .hub_format import CARD_METADATA, REMOTE_CODE, transformers_config
from .labels import LABELS
from .preprocessing import eval_transform, input_size, preprocessing_config

# Old import paths (`from serving.model import load_model`, ...) keep working: name -> the module that defines it
MOVED = {"DEFAULT_MODEL": "serving.loading", "ModelNotFound": "serving.loading", "add_model_argument": "serving.loading",
         "load_model": "serving.loading", "NotAChestXray": "serving.predictor", "Predictor": "serving.predictor"}


def __getattr__(name: str):
    if name in MOVED:
        return getattr(importlib.import_module(MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def frozen_backbone(model_name: str, pretrained: bool = False) -> nn.Module:
    """A timm feature extractor (no classifier) with every parameter and BatchNorm statistic frozen."""
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    # freeze() swaps BatchNorm for FrozenBatchNorm2d, so running stats cannot move in train mode.
    timm.utils.freeze(backbone)
    return backbone.eval()


class PneumoniaClassifier(nn.Module, PyTorchModelHubMixin, **CARD_METADATA):
    """NORMAL vs PNEUMONIA classifier; its `__init__` arguments are its saved config.

    `PneumoniaClassifier.from_pretrained(dir_or_repo_id)` reloads a saved model (in eval mode);
    `predict(path_or_image)` returns `{label: calibrated probability}`, or raises NotAChestXray for an image the
    guard refuses. `Predictor(model)` (serving/predictor.py) gives the whole answer: decision, guard, heatmap.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        head_hidden_dim: int = 256,
        dropout: float = 0.5,
        labels: list[str] = list(LABELS),
        preprocessing: dict | None = None,
        imagenet_weights: bool = False,
    ):
        super().__init__()
        # Weights always come from a checkpoint or from the trainer; never download here.
        self.backbone = frozen_backbone(model_name)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.num_features, head_hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden_dim, len(labels)),
        )
        self.labels = list(labels)
        self.preprocessing = preprocessing or preprocessing_config(model_name)
        self.imagenet_weights = imagenet_weights
        self.transform = eval_transform(self.preprocessing)
        # Chosen on validation after training (trainer/calibration.py); saved with the weights.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("decision_threshold", torch.tensor(0.5))
        # The not-an-X-ray guard (serving/guard.py), fitted after training; off (inf) until then.
        statistics = 2 * sum(info["num_chs"] for info in self.backbone.feature_info[-GUARD_STAGES:])
        self.register_buffer("guard_mean", torch.zeros(statistics))
        # float64: the distance is a quadratic form of an ill-conditioned matrix (see mahalanobis)
        self.register_buffer("guard_precision", torch.zeros(statistics, statistics, dtype=torch.float64))
        self.register_buffer("guard_threshold", torch.tensor(float("inf")))

    # Forward passes

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values)

    def forward(self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from images, or from backbone features computed earlier (the feature cache)."""
        return self.head(self.forward_features(pixel_values) if features is None else features)

    def serving_forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What serving needs, from one backbone pass: logits, the guard's statistics, and the last feature map
        (N, C, h, w) that the pooled features come from, which Grad-CAM weighs (serving/heatmap.py)."""
        final, stages = self.backbone.forward_intermediates(pixel_values, indices=GUARD_STAGES)
        return self.head(self.backbone.forward_head(final)), stage_statistics(stages), final

    def logits_from_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The rest of the network after the last feature map: pooling and head (cheap; Grad-CAM differentiates it)."""
        return self.head(self.backbone.forward_head(feature_map))

    def train(self, mode: bool = True) -> "PneumoniaClassifier":
        """Only the head ever trains; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    # Operating point and guard, fitted after training

    @property
    def threshold(self) -> float:
        """Decision threshold on the calibrated P(PNEUMONIA)."""
        return float(self.decision_threshold)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model's input; large JPEGs are decoded at reduced scale down to it."""
        return input_size(self.preprocessing)

    def set_operating_point(self, temperature: float, threshold: float) -> None:
        self.temperature.fill_(temperature)
        self.decision_threshold.fill_(threshold)

    def set_feature_guard(self, mean: torch.Tensor, precision: torch.Tensor, threshold: torch.Tensor) -> None:
        self.guard_mean.copy_(mean)
        self.guard_precision.copy_(precision)
        self.guard_threshold.copy_(threshold)

    # Prediction: a shortcut kept for users; the work is serving/predictor.py's

    def predict(self, image: str | Path | Image.Image, allow_non_xray: bool = False) -> dict[str, float]:
        """`{label: calibrated probability}` for an image file (JPEG, PNG, DICOM...) or a PIL image (any mode).

        Raises NotAChestXray (an InputImageError, with the Space's sentence) for an image that does not look like a
        chest X-ray, unless `allow_non_xray` asks for the probabilities anyway; InputImageError for an unusable file.
        """
        from .predictor import NotAChestXray, Predictor  # the predictor holds a model, not the other way round

        prediction = Predictor(self, engine="eager").analyse(image)
        if not (prediction.looks_like_xray or allow_non_xray):
            raise NotAChestXray(prediction)
        return prediction.probabilities

    # Save / load

    def _save_pretrained(self, save_directory: Path) -> None:
        """Weights (safetensors), one config.json for both loaders (and the image processor), the remote code."""
        super()._save_pretrained(save_directory)
        config = {**self._hub_mixin_config,
                  **transformers_config(self.labels, self.backbone.num_features, self.preprocessing)}
        (save_directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        shutil.copy(REMOTE_CODE, save_directory / REMOTE_CODE.name)
