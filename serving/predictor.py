"""The one predictor behind every entry point (app, `trainer.predict`, `PneumoniaClassifier.predict`, evaluation).

From one forward pass of a batch: calibrated probabilities (softmax of logits / temperature), the decision
at the model's threshold, the not-an-X-ray guard's verdict and, on request, the Grad-CAM map of the
decision. The operating point and guard are read from the model's buffers at each call; nothing
per-request is stored on the predictor or the model, so one predictor serves concurrent requests.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .guard import mahalanobis
from .heatmap import HEATMAP_OPACITY, grad_cam, overlay
from .images import read_image
from .runtime import onnx_forward

POSITIVE = "PNEUMONIA"  # the class the decision threshold is set on


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image."""

    probabilities: dict[str, float]  # calibrated, {label: probability}
    decision: str  # PNEUMONIA when P(PNEUMONIA) >= the model's threshold, else NORMAL
    threshold: float  # the model's decision threshold on P(PNEUMONIA)
    guard_distance: float  # Mahalanobis distance of the image's activation statistics from the training X-rays'
    looks_like_xray: bool  # within the range of the validation X-rays
    heatmap: np.ndarray | None = None  # Grad-CAM of the decision on the last feature map (h, w), if asked for

    def overlay(self, image: Image.Image, opacity: float = HEATMAP_OPACITY) -> Image.Image:
        """The heatmap blended over `image` (at the image's size; the model saw the whole image squashed)."""
        return overlay(image, self.heatmap, opacity)


class Predictor:
    """Predictions for a model, through ONNX Runtime (`engine="onnxruntime"`, CPU) or eager PyTorch."""

    def __init__(self, model, engine: str = "onnxruntime"):
        self.model = model.eval()
        on_cpu = next(model.parameters()).device.type == "cpu"
        exported = onnx_forward(model) if engine == "onnxruntime" and on_cpu else None
        self.engine = "onnxruntime" if exported is not None else "eager"
        self.forward = exported or self.eager_forward

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
        """One Prediction per image of a preprocessed batch (N, 3, H, W); heatmaps explain each decision."""
        labels, threshold, guard_threshold = self.model.labels, self.model.threshold, float(self.model.guard_threshold)
        logits, statistics, feature_maps = self.forward(pixel_values)
        probabilities = [dict(zip(labels, p.tolist())) for p in self.probabilities(logits)]
        decisions = [self.decide(p[POSITIVE]) for p in probabilities]
        distances = self.guard_distances(statistics).tolist()
        cams = grad_cam(self.model, feature_maps, [labels.index(d) for d in decisions]) if heatmaps else [None] * len(decisions)
        return [Prediction(p, decision, threshold, distance, distance <= guard_threshold, cam)
                for p, decision, distance, cam in zip(probabilities, decisions, distances, cams)]

    def read(self, path: str | Path | None) -> Image.Image:
        """An image file as RGB, large JPEGs decoded at reduced scale; InputImageError if it cannot be used."""
        return read_image(path, self.model.input_size)

    def predict_image(self, image: str | Path | Image.Image, heatmap: bool = False) -> Prediction:
        """The Prediction for an image file (JPEG, PNG, DICOM...: `read`) or a PIL image of any mode."""
        if not isinstance(image, Image.Image):
            image = self.read(image)
        return self.predict(self.model.transform(image).unsqueeze(0), heatmaps=heatmap)[0]
