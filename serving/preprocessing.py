"""The one image preprocessing definition, shared by training, evaluation, the CLI, the app and the Hub.

Size, mean, std and interpolation come from the backbone's timm data config. Chest X-rays are
resized whole to the square input ("squash") instead of timm's default resize-then-centre-crop:
a centre crop cuts the lung edges off wide radiographs, and squashing makes the full-size Kaggle
originals (1-3k px, wider than tall) and the 224x224 shared copy look alike to the model.

JPEGs larger than the input are decoded at reduced scale (Pillow's draft mode: the smallest of 1/2,
1/4, 1/8 that still covers the input size), which saves most of the decoding of full-size X-rays
(benchmarks/full_resolution.py); images already at input size decode exactly as before.
"""

from functools import partial

import numpy as np
import timm.data
from PIL import Image
from torchvision import transforms

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def preprocessing_config(model_name: str) -> dict:
    """The JSON-able preprocessing stored with the model: the backbone's timm data config, squashed."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name).to_dict()
    config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg)
    return {
        "input_size": list(config["input_size"]),
        "interpolation": config["interpolation"],
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any PIL mode (L, LA, RGB, RGBA, P, I;16, I, F) to 8-bit RGB.

    16-bit images are scaled by their full range (65535 → 255). 32-bit integer images (how some
    readers store 8- or 16-bit data) by the smallest of those ranges that holds them; float images
    by their own min-max. Alpha is dropped.
    """
    if image.mode in SIXTEEN_BIT_MODES | {"I", "F"}:
        pixels = np.asarray(image, dtype=np.float32)
        return Image.fromarray(scale_to_uint8(pixels, image.mode)).convert("RGB")
    return image.convert("RGB")


def scale_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    low, high = float(pixels.min()), float(pixels.max())
    if mode == "F" or low < 0 or high > 65535:
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    elif mode in SIXTEEN_BIT_MODES or high > 255:
        scaled = pixels / 257.0
    else:
        scaled = pixels
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def input_size(preprocessing: dict) -> tuple[int, int]:
    """(width, height) the model sees."""
    _, height, width = preprocessing["input_size"]
    return width, height


def draft(image: Image.Image, size: tuple[int, int] | None, mode: str | None = None) -> Image.Image:
    """Before decoding: make a JPEG decode at the smallest DCT scale still covering `size` (else a no-op), in `mode`
    ("L": grey only) or its own."""
    if size is not None:
        image.draft(mode or image.mode, size)  # returns None, changing nothing, for other formats or loaded images
    return image


def decode_for_model(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """First preprocessing step: a lazily opened image is drafted to `size`, then any image becomes RGB."""
    return to_rgb(draft(image, size))


def eval_transform(preprocessing: dict) -> transforms.Compose:
    """PIL image of any mode → normalised float tensor, exactly as the model saw in training."""
    timm_transform = timm.data.create_transform(**preprocessing, is_training=False)
    decode = partial(decode_for_model, size=input_size(preprocessing))
    return transforms.Compose([transforms.Lambda(decode), *timm_transform.transforms])
