"""The one predictor behind every entry point (the Space, `trainer.predict`, `PneumoniaClassifier.predict`, evaluation).

A Predictor holds a model, as a transformers pipeline holds its model, and owns what is done with the model's
outputs. From one forward pass of a batch: calibrated probabilities (softmax of logits / temperature), the
decision at the model's threshold, the not-an-X-ray guard's verdict and, on request, the Grad-CAM map of the
decision. An image the guard refuses is answered NOT_A_CHEST_XRAY instead of a class. The operating point and
guard are read from the model's buffers at each call; nothing per-request is stored on the predictor or the
model, so one predictor serves concurrent requests.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .guard import mahalanobis
from .heatmap import HEATMAP_OPACITY, grad_cam, overlay
from .images import InputImageError, read_image
from .labels import NOT_A_CHEST_XRAY, POSITIVE, not_an_xray_sentence
from .runtime import onnx_forward


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image."""

    probabilities: dict[str, float]  # calibrated, {label: probability}: the model's output, whatever the image
    decision: str  # the answer: PNEUMONIA when P(PNEUMONIA) >= threshold, else NORMAL; NOT_A_CHEST_XRAY if refused
    threshold: float  # the model's decision threshold on P(PNEUMONIA)
    guard_distance: float  # Mahalanobis distance of the image's activation statistics from the training X-rays'
    guard_limit: float  # the largest distance the guard accepts (that of the validation X-rays)
    heatmap: np.ndarray | None = None  # Grad-CAM of the decision on the last feature map (h, w), if asked for

    @property
    def looks_like_xray(self) -> bool:
        return self.guard_distance <= self.guard_limit

    def overlay(self, image: Image.Image, opacity: float = HEATMAP_OPACITY) -> Image.Image:
        """The heatmap blended over `image` (at the image's size; the model saw the whole image squashed)."""
        return overlay(image, self.heatmap, opacity)


class NotAChestXray(InputImageError):
    """A readable image that the not-an-X-ray guard refuses; `prediction` holds the model's whole output."""

    def __init__(self, prediction: Prediction):
        super().__init__(not_an_xray_sentence(prediction.guard_distance, prediction.guard_limit))
        self.prediction = prediction


class Predictor:
    """Predictions of a model in eval mode, through ONNX Runtime (`engine="onnxruntime"`, CPU) or eager PyTorch."""

    def __init__(self, model, engine: str = "onnxruntime"):
        self.model = model
        self.check_eval_mode()
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.exported_version = self.weights_version()
        self.exported = onnx_forward(model) if engine == "onnxruntime" and on_cpu else None
        self.engine = "onnxruntime" if self.exported is not None else "eager"

    def check_eval_mode(self) -> None:
        if self.model.training:  # dropout would make every answer random; the predictor never changes the mode
            raise ValueError("The model is in training mode: call model.eval() before predicting with it.")

    def weights_version(self) -> int:
        """Changes whenever a weight of the network is changed in place (training, load_state_dict): torch counts
        each tensor's in-place writes. The operating point and guard buffers are read at each call instead."""
        return sum(tensor._version for module in (self.model.backbone, self.model.head)
                   for tensor in (*module.parameters(), *module.buffers()))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`model.serving_forward`: logits, guard statistics, last feature map. Through the ONNX export while the
        weights are those it was exported from, never a stale copy: eager PyTorch once they have changed."""
        self.check_eval_mode()
        if self.exported is not None and self.weights_version() == self.exported_version:
            return self.exported(pixel_values)
        return self.eager_forward(pixel_values)

    @torch.inference_mode()
    def eager_forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.serving_forward(pixel_values.to(self.model.temperature.device))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: softmax(logits / temperature), on the logits' device."""
        return (logits.float() / self.model.temperature.to(logits.device)).softmax(dim=-1)

    def decide(self, pneumonia_probability: float) -> str:
        """The label at the decision threshold (not the argmax): PNEUMONIA when P(PNEUMONIA) >= threshold."""
        negative, = (label for label in self.model.labels if label != POSITIVE)
        return POSITIVE if pneumonia_probability >= self.model.threshold else negative

    def guard_distances(self, statistics: torch.Tensor) -> torch.Tensor:
        model = self.model
        return mahalanobis(statistics.to(model.guard_mean.device), model.guard_mean, model.guard_precision).cpu()

    def predict(self, pixel_values: torch.Tensor, heatmaps: bool = False) -> list[Prediction]:
        """One Prediction per image of a preprocessed batch (N, 3, H, W); heatmaps explain each decision (none for
        an image the guard refuses)."""
        labels, threshold, limit = self.model.labels, self.model.threshold, float(self.model.guard_threshold)
        logits, statistics, feature_maps = self.forward(pixel_values)
        probabilities = [dict(zip(labels, p.tolist())) for p in self.probabilities(logits)]
        decisions = [self.decide(p[POSITIVE]) for p in probabilities]
        distances = self.guard_distances(statistics).tolist()
        cams = grad_cam(self.model, feature_maps, [labels.index(d) for d in decisions]) if heatmaps else None
        return [Prediction(p, decision if distance <= limit else NOT_A_CHEST_XRAY, threshold, distance, limit,
                           cams[n] if cams is not None and distance <= limit else None)
                for n, (p, decision, distance) in enumerate(zip(probabilities, decisions, distances))]

    def read(self, path: str | Path | None) -> Image.Image:
        """An image file as RGB, large JPEGs decoded at reduced scale; InputImageError if it cannot be used."""
        return read_image(path, self.model.input_size)

    def analyse(self, image: str | Path | Image.Image, heatmap: bool = False) -> Prediction:
        """The Prediction for an image file (JPEG, PNG, DICOM...: `read`) or a PIL image of any mode."""
        if not isinstance(image, Image.Image):
            image = self.read(image)
        return self.predict(self.model.transform(image).unsqueeze(0), heatmaps=heatmap)[0]
