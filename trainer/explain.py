"""Grad-CAM: where in the image the evidence for the predicted class lies (last convolutional stage)."""

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def last_stage(model) -> torch.nn.Module:
    """The backbone's last feature stage, as timm's feature_info names it (layer4 for ResNets)."""
    return model.backbone.get_submodule(model.backbone.feature_info[-1]["module"])


def grad_cam_overlay(model, image: Image.Image, class_index: int) -> Image.Image:
    """A heatmap of `class_index` evidence blended over the image as the model sees it (input size)."""
    model.eval()
    pixel_values = model.transform(image).unsqueeze(0)
    # The backbone is frozen, so only an input that needs gradients puts its activations in the graph.
    pixel_values.requires_grad_(True)
    with GradCAM(model=model, target_layers=[last_stage(model)]) as cam:
        heatmap = cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(class_index)])[0]
    height, width = heatmap.shape
    shown = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(shown, heatmap, use_rgb=True, image_weight=0.6))
