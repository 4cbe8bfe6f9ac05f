"""Inference Endpoints handler for a Pneumonia Detector model repo: `EndpointHandler(path)` / `__call__(data)`.

Runs without the project, with the packages of this repo's requirements.txt: the model is this repo's transformers
remote code (`modeling_pneumonia.py`, the decision-first pipeline with the not-an-X-ray guard). Deploy the repo as an
Inference Endpoint (custom handler), then send either the image itself (a raw JPEG/PNG body, which the Inference
Endpoints toolkit decodes to an image) or JSON:

    {"inputs": "<base64 of a JPEG, PNG or DICOM file>", "parameters": {"heatmap": true}}

The answer is the pipeline's, decision first, each entry with the model's `threshold` and the `looks_like_chest_xray`
verdict: `[{"label": "PNEUMONIA", "score": ..., "probability": ..., "threshold": ..., "looks_like_chest_xray": true},
{"label": "NORMAL", ...}]`, or for an image that is not a chest X-ray `[{"label": "NOT_A_CHEST_XRAY", "score": 1.0,
"guard_distance": ..., "guard_limit": ..., "threshold": ..., "looks_like_chest_xray": false}]`. With
`"parameters": {"heatmap": true}` the decision's entry also carries `heatmap`: the Grad-CAM map of the decision on the
backbone's last feature map (rows of non-negative floats, 7-by-7 for a ResNet18; upsample it over the image as it
was sent, which the model saw whole, squashed to its input). Input that is not an
image raises ValueError with the reason (the toolkit answers it as an error). DICOM is rendered by the rules of the
project's reader (modality LUT, VOI LUT / window, MONOCHROME1 inverted, scaled by the bits stored).
Research demo, not for clinical use.
"""

import base64
import binascii
import io

import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from transformers import pipeline

NOT_A_CHEST_XRAY = "NOT_A_CHEST_XRAY"


def dicom_image(data: bytes) -> Image.Image:
    """A DICOM file's image as 8-bit grey RGB, rendered as the project's reader renders it."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for damaged files and unsupported transfer syntaxes
        raise ValueError(f"The DICOM file cannot be read ({type(error).__name__}: {error}).") from error
    if stored.ndim != 2:
        raise ValueError(f"Expected one greyscale image in the DICOM file, found an array of shape {stored.shape}.")
    pixels = apply_modality_lut(stored, dataset).astype(np.float64)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        pixels = apply_voi_lut(pixels, dataset, prefer_lut=True).astype(np.float64)
    low, high = 0.0, float(2 ** int(dataset.BitsStored) - 1)
    if pixels.min() < low or pixels.max() > high:
        low, high = float(pixels.min()), float(pixels.max())
    grey = (pixels - low) / max(high - low, 1.0) * 255.0
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        grey = 255.0 - grey
    return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


def decoded(inputs) -> Image.Image:
    """The request's image: as the toolkit decoded it, or from base64 (DICOM by its preamble, else a bitmap)."""
    if isinstance(inputs, Image.Image):
        return inputs.convert("RGB")
    if not isinstance(inputs, str | bytes):
        raise ValueError(f"Send an image, or JSON {{\"inputs\": \"<base64 JPEG, PNG or DICOM>\"}}; got {type(inputs).__name__}.")
    try:
        data = base64.b64decode(inputs, validate=True) if isinstance(inputs, str) else inputs
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"`inputs` is not valid base64 ({error}). Send the file's bytes base64-encoded.") from error
    if data[128:132] == b"DICM":
        return dicom_image(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError("`inputs` is not an image this endpoint can read: send a JPEG, PNG or DICOM file.") from error


class EndpointHandler:
    def __init__(self, path: str = ""):
        self.classify = pipeline("image-classification", model=path or ".", trust_remote_code=True)
        self.threshold = float(self.classify.model.decision_threshold)

    def __call__(self, data: dict) -> list[dict]:
        image = decoded(data.get("inputs", data) if isinstance(data, dict) else data)
        answer = self.classify(image)
        looks_like_xray = answer[0]["label"] != NOT_A_CHEST_XRAY
        answer = [{**entry, "threshold": self.threshold, "looks_like_chest_xray": looks_like_xray} for entry in answer]
        parameters = data.get("parameters") or {} if isinstance(data, dict) else {}
        if parameters.get("heatmap") and looks_like_xray:
            answer[0]["heatmap"] = self.grad_cam(image, answer[0]["label"]).tolist()
        return answer

    def grad_cam(self, image: Image.Image, label: str) -> np.ndarray:
        """Grad-CAM of `label` on the last feature map: only pooling and the head lie between the map and the logits,
        so the gradient is a backward pass through those (as the project's app computes it)."""
        model = self.classify.model
        pixels = self.classify.image_processor(image, return_tensors="pt")["pixel_values"].to(model.device)
        with torch.no_grad():
            feature_map, _ = model.backbone.forward_intermediates(pixels, indices=1)
        feature_map.requires_grad_(True)
        logits = model.head(model.backbone.forward_head(feature_map))
        (gradients,) = torch.autograd.grad(logits[0, model.config.label2id[label]], feature_map)
        weights = gradients.mean(dim=(2, 3))
        return torch.einsum("nc,nchw->nhw", weights, feature_map.detach()).clamp_min(0)[0].cpu().numpy()
