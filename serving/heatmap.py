"""Grad-CAM from the prediction's own forward pass: no hooks, no second pass through the backbone.

Grad-CAM (Selvaraju et al., 2017) weighs each channel c of a feature map A by the spatial mean of
∂y/∂A_c, y the class score, and keeps the positive part of the weighted sum. For the last feature map,
only pooling and the head lie between A and y, so the gradient is a backward pass through those alone.
A comes out of the forward pass that made the prediction (eager or ONNX Runtime), so each request's map
is built from its own tensors: nothing is registered on the shared model, and concurrent requests
cannot mix. tests/test_serving.py checks it equals pytorch-grad-cam's map for the same layer.
"""

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from PIL import Image

HEATMAP_OPACITY = 0.4  # weight of the colour map; the radiograph shows through with the rest
JET = matplotlib.colormaps["jet"](np.arange(256))[:, :3].astype(np.float32)  # 256 levels, as 8-bit colour maps have


def grad_cam(model, feature_maps: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
    """(N, h, w) non-negative Grad-CAM maps of class `class_indices[n]` for each feature map (N, C, h, w)."""
    # A fresh leaf outside inference mode: the maps may come from an inference_mode forward pass.
    with torch.inference_mode(False), torch.enable_grad():
        maps = feature_maps.detach().clone().float().requires_grad_(True)
        logits = model.logits_from_feature_map(maps)
        targets = torch.as_tensor(list(class_indices), device=logits.device).view(-1, 1)
        (gradients,) = torch.autograd.grad(logits.gather(1, targets).sum(), maps)
        weights = gradients.mean(dim=(2, 3))
        return torch.einsum("nc,nchw->nhw", weights, maps.detach()).clamp_min(0).cpu().numpy()


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map resized bilinearly to `size` (width, height) and scaled to [0, 1], as pytorch-grad-cam scales it."""
    width, height = size
    resized = torch.nn.functional.interpolate(torch.from_numpy(cam)[None, None].float(), size=(height, width),
                                              mode="bilinear", align_corners=False)[0, 0].numpy()
    resized = resized - resized.min()
    return resized / (1e-7 + resized.max())


def overlay(image: Image.Image, cam: np.ndarray, opacity: float = HEATMAP_OPACITY) -> Image.Image:
    """The map in the jet colour map, blended over `image` at the image's own size (RGB) with `opacity` in [0, 1]."""
    colours = JET[np.uint8(255 * upsample(cam, image.size))]
    shown = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = opacity * colours + (1 - opacity) * shown
    return Image.fromarray(np.uint8(255 * blended / blended.max()))
