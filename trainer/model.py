"""The classifier: a frozen timm backbone (BatchNorm statistics included) and a small trainable head."""

import json
import logging
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin, constants, try_to_load_from_cache
from PIL import Image
from torch import nn

from .feature_guard import GUARD_STAGES, mahalanobis, stage_statistics
from .preprocessing import eval_transform, input_size, load_image, preprocessing_config
from .runtime import onnx_forward

logger = logging.getLogger(__name__)

LABELS = ["NORMAL", "PNEUMONIA"]
REMOTE_CODE = Path(__file__).resolve().parent / "hub_files" / "modeling_pneumonia.py"


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but could not be downloaded or found in the cache."""


def frozen_backbone(model_name: str, pretrained: bool) -> nn.Module:
    """A timm feature extractor (no classifier) with every parameter and BatchNorm statistic frozen."""
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    # freeze() swaps BatchNorm for FrozenBatchNorm2d, so running stats cannot move in train mode.
    timm.utils.freeze(backbone)
    return backbone.eval()


def weights_cached(model_name: str) -> bool:
    """Whether the default ImageNet weights of `model_name` are already in the Hugging Face cache."""
    repo_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    return bool(repo_id) and any(isinstance(try_to_load_from_cache(repo_id, name), str)
                                 for name in ("model.safetensors", "pytorch_model.bin"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub endpoint, instead of the client's five slow retries."""
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def imagenet_backbone(model_name: str) -> nn.Module:
    """The frozen backbone with ImageNet weights, or a clear error at once when they cannot be had."""
    advice = "Check the network, or pass --no_pretrained to train from random initialisation."
    if not weights_cached(model_name) and (constants.HF_HUB_OFFLINE or not hub_reachable()):
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {model_name!r} are not in the local cache and the Hub ({constants.ENDPOINT}) "
            f"is {'disabled by HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else 'unreachable'}. {advice}")
    try:
        return frozen_backbone(model_name, pretrained=True)
    except Exception as error:  # timm and huggingface_hub raise many network and cache error types
        raise PretrainedWeightsUnavailable(
            f"Could not load ImageNet weights for {model_name!r} ({type(error).__name__}: {error}). {advice}"
        ) from error


class PneumoniaClassifier(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="timm",
    pipeline_tag="image-classification",
    license="cc-by-4.0",
    tags=["chest-x-ray", "pneumonia", "medical-imaging", "research-only"],
):
    """NORMAL vs PNEUMONIA classifier; its `__init__` arguments are its saved config.

    `PneumoniaClassifier.from_pretrained(dir_or_repo_id)` reloads a saved model; `predict(image)`
    returns `{label: probability}` with the stored preprocessing applied.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        head_hidden_dim: int = 256,
        dropout: float = 0.5,
        labels: list[str] = LABELS,
        preprocessing: dict | None = None,
        imagenet_weights: bool = False,
    ):
        super().__init__()
        # Weights always come from a checkpoint or from `with_imagenet_backbone`; never download here.
        self.backbone = frozen_backbone(model_name, pretrained=False)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.num_features, head_hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden_dim, len(labels)),
        )
        self.labels = list(labels)
        self.preprocessing = preprocessing or preprocessing_config(model_name)
        self.imagenet_weights = imagenet_weights
        self._transform = None
        self._onnx_forward = None  # set by use_onnxruntime()
        # Chosen on validation after training (trainer/calibration.py); saved with the weights.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("decision_threshold", torch.tensor(0.5))
        # The not-an-X-ray guard (trainer/feature_guard.py), fitted after training; off (inf) until then.
        statistics = 2 * sum(info["num_chs"] for info in self.backbone.feature_info[-GUARD_STAGES:])
        self.register_buffer("guard_mean", torch.zeros(statistics))
        # float64: the distance is a quadratic form of an ill-conditioned matrix (see mahalanobis)
        self.register_buffer("guard_precision", torch.zeros(statistics, statistics, dtype=torch.float64))
        self.register_buffer("guard_threshold", torch.tensor(float("inf")))

    @classmethod
    def for_training(cls, model_name: str, pretrained: bool, head_hidden_dim: int, dropout: float) -> "PneumoniaClassifier":
        """A fresh model whose backbone carries ImageNet weights when `pretrained` is true."""
        model = cls(model_name, head_hidden_dim, dropout, preprocessing=preprocessing_config(model_name),
                    imagenet_weights=pretrained)
        if pretrained:
            model.backbone.load_state_dict(imagenet_backbone(model_name).state_dict())
        return model

    def transformers_config(self) -> dict:
        """Keys that let `transformers` load the same folder with `trust_remote_code=True`."""
        return {
            "model_type": "pneumonia_classifier",
            "architectures": ["PneumoniaForImageClassification"],
            "auto_map": {"AutoConfig": "modeling_pneumonia.PneumoniaConfig",
                         "AutoModelForImageClassification": "modeling_pneumonia.PneumoniaForImageClassification"},
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: i for i, label in enumerate(self.labels)},
            "num_features": self.backbone.num_features,
            # transformers' stock TimmWrapperImageProcessor reads these from config.json
            "image_processor_type": "TimmWrapperImageProcessor",
            "pretrained_cfg": self.preprocessing,
        }

    def _save_pretrained(self, save_directory: Path) -> None:
        """Weights (safetensors), one config.json for both loaders (and the image processor), the remote code."""
        super()._save_pretrained(save_directory)
        config = {**self._hub_mixin_config, **self.transformers_config()}
        (save_directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        shutil.copy(REMOTE_CODE, save_directory / REMOTE_CODE.name)

    def train(self, mode: bool = True) -> "PneumoniaClassifier":
        """Only the head ever trains; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        if mode:
            self._onnx_forward = None  # the exported copy would go stale as the head trains
        return self

    def use_onnxruntime(self) -> bool:
        """Run `analyse`, `predict` and `logits_and_guard_distances` through ONNX Runtime (1.5-1.8× faster on CPU).

        Exports the current weights; returns False, keeping eager PyTorch, off the CPU or if export fails.
        """
        self.eval()
        if next(self.parameters()).device.type == "cpu":
            self._onnx_forward = onnx_forward(self)
        return self._onnx_forward is not None

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values)

    def forward(self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from images, or from backbone features computed earlier (the feature cache)."""
        return self.head(self.forward_features(pixel_values) if features is None else features)

    @property
    def transform(self):
        if self._transform is None:
            self._transform = eval_transform(self.preprocessing)
        return self._transform

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model's input; large JPEGs are decoded at reduced scale down to it."""
        return input_size(self.preprocessing)

    @property
    def threshold(self) -> float:
        """Decision threshold on P(PNEUMONIA)."""
        return float(self.decision_threshold)

    def decide(self, probabilities: dict[str, float]) -> str:
        """The label at the decision threshold (not the argmax): PNEUMONIA when P(PNEUMONIA) >= threshold."""
        return "PNEUMONIA" if probabilities["PNEUMONIA"] >= self.threshold else "NORMAL"

    def looks_like_xray(self, distance: float) -> bool:
        """Whether a guard distance is within the range of the validation X-rays."""
        return distance <= float(self.guard_threshold)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: softmax(logits / temperature), on the logits' device."""
        return (logits.float() / self.temperature.to(logits.device)).softmax(dim=-1)

    def set_operating_point(self, temperature: float, threshold: float) -> None:
        self.temperature.fill_(temperature)
        self.decision_threshold.fill_(threshold)

    def set_feature_guard(self, mean: torch.Tensor, precision: torch.Tensor, threshold: torch.Tensor) -> None:
        self.guard_mean.copy_(mean)
        self.guard_precision.copy_(precision)
        self.guard_threshold.copy_(threshold)

    def features_and_statistics(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features for the head and, from the same forward pass, the guard's statistics."""
        final, stages = self.backbone.forward_intermediates(pixel_values, indices=GUARD_STAGES)
        return self.backbone.forward_head(final), stage_statistics(stages)

    def guard_distances(self, statistics: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each image's guard statistics from the training X-rays'."""
        return mahalanobis(statistics.to(self.guard_mean.device), self.guard_mean, self.guard_precision)

    @torch.inference_mode()
    def logits_and_guard_distances(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode logits and guard distances, through ONNX Runtime after `use_onnxruntime()`."""
        if self._onnx_forward is not None:
            logits, statistics = self._onnx_forward(pixel_values)
        else:
            self.eval()
            features, statistics = self.features_and_statistics(pixel_values.to(next(self.parameters()).device))
            logits = self.head(features)
        return logits, self.guard_distances(statistics)

    @torch.inference_mode()
    def analyse(self, image: Image.Image) -> tuple[dict[str, float], float, bool]:
        """Return ({label: probability}, guard distance, whether the image looks like a chest X-ray)."""
        logits, distances = self.logits_and_guard_distances(self.transform(image).unsqueeze(0))
        probabilities = self.probabilities(logits)[0]
        distance = float(distances[0])
        return {label: float(p) for label, p in zip(self.labels, probabilities)}, distance, self.looks_like_xray(distance)

    def predict(self, image: str | Path | Image.Image) -> dict[str, float]:
        """Return `{label: probability}` for an image path or PIL image (any mode)."""
        if not isinstance(image, Image.Image):
            image = load_image(image, self.input_size)
        return self.analyse(image)[0]
