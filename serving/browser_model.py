"""Private mode: the served model as one ONNX graph that ONNX Runtime Web runs in the visitor's browser.

The graph takes the normalised pixels (N, 3, H, W) that `model.transform` makes and returns what the
Space shows, computed as serving/predictor.py computes it: calibrated probabilities, the decision at
the model's threshold, the not-an-X-ray guard's distance and verdict, and the Grad-CAM map of the
decision. Two steps are rewritten so that a browser can run them:
- the guard's Mahalanobis distance is the norm of whitened statistics, ‖W(x - μ)‖ with WᵀW the
  precision matrix, in float32 (the float64 precision matrix is 29 MB; W in float32 is half of it);
- Grad-CAM's gradient is written out: between the last feature map A and the class score y lie only
  average pooling and the head (Linear → ReLU → Dropout → Linear), so ∂y/∂A is W₁ᵀ(1[h > 0] ⊙ W₂[y])
  spread evenly over the h×w positions, and the channel weights are its spatial mean.
tests/test_private_mode.py checks every output against the Predictor's.
"""

import json

import torch
from torch import nn

from .heatmap import HEATMAP_OPACITY, JET
from .images import MAX_PIXELS, MIN_SIDE
from .labels import NOT_A_CHEST_XRAY, POSITIVE
from .runtime import INPUT, onnx_bytes

OUTPUTS = ["probabilities", "decision", "guard_distance", "looks_like_xray", "heatmap"]
ONNX_FILE, CONFIG_FILE = "onnx/model.onnx", "onnx/config.json"  # where they live in the model repo


def whitening(precision: torch.Tensor) -> torch.Tensor:
    """W with WᵀW = precision (symmetric, positive semi-definite), from its eigendecomposition in float64."""
    eigenvalues, eigenvectors = torch.linalg.eigh(precision.double())
    return eigenvectors.T * eigenvalues.clamp_min(0).sqrt().unsqueeze(1)


class BrowserModel(nn.Module):
    """What private mode exports: pixels in, everything the page shows out (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        linear, relu, _dropout, output = model.head
        if not (isinstance(linear, nn.Linear) and isinstance(relu, nn.ReLU) and isinstance(output, nn.Linear)):
            raise TypeError("the browser export writes out Grad-CAM for a Linear → ReLU → Dropout → Linear head")
        self.model = model
        self.positive = model.labels.index(POSITIVE)
        self.negative = 1 - self.positive
        self.register_buffer("guard_whitening", whitening(model.guard_precision).float())

    def class_weights(self, feature_map: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Grad-CAM's channel weights: the spatial mean of ∂(score of `classes`)/∂feature_map, written out."""
        linear, _relu, _dropout, output = self.model.head
        hidden = linear(self.model.backbone.forward_head(feature_map))
        pooled_gradient = ((hidden > 0).to(hidden.dtype) * output.weight[classes]) @ linear.weight
        return pooled_gradient / (feature_map.shape[2] * feature_map.shape[3])

    def forward(self, pixel_values: torch.Tensor):
        model = self.model
        logits, statistics, feature_map = model.serving_forward(pixel_values)
        probabilities = (logits / model.temperature).softmax(dim=-1)
        decision = torch.where(probabilities[:, self.positive] >= model.decision_threshold,
                               self.positive, self.negative)
        whitened = (statistics - model.guard_mean) @ self.guard_whitening.T
        guard_distance = whitened.square().sum(dim=1).sqrt()
        heatmap = torch.einsum("nc,nchw->nhw", self.class_weights(feature_map, decision), feature_map).clamp_min(0)
        return probabilities, decision, guard_distance, guard_distance <= model.guard_threshold, heatmap


def page_config(model: nn.Module) -> dict:
    """What the page needs besides the graph: the preprocessing to reproduce, labels and operating point (shown,
    the graph applies them itself), and the heatmap's colours."""
    return {
        "input": INPUT,
        "outputs": OUTPUTS,
        "labels": model.labels,
        "positive_label": POSITIVE,
        "not_a_chest_xray": NOT_A_CHEST_XRAY,  # the answer for an image the guard refuses
        "decision_threshold": model.threshold,
        "temperature": float(model.temperature),
        "guard_threshold": float(model.guard_threshold) if torch.isfinite(model.guard_threshold) else None,
        "preprocessing": model.preprocessing,
        "limits": {"max_pixels": MAX_PIXELS, "min_side": MIN_SIDE},  # what every entry point refuses to read
        "heatmap_opacity": HEATMAP_OPACITY,
        "jet": JET.round(4).tolist(),  # 256 RGB levels in [0, 1], as serving/heatmap.py blends them
    }


def browser_files(model: nn.Module) -> dict[str, bytes]:
    """{path in the model repo: content} for private mode: the ONNX graph and its JSON config."""
    graph = onnx_bytes(BrowserModel(model), model.preprocessing["input_size"], OUTPUTS)
    return {ONNX_FILE: graph, CONFIG_FILE: json.dumps(page_config(model), indent=1).encode()}
