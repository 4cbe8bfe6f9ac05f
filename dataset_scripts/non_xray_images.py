"""A fixed set of images that are not chest X-rays, for measuring the app's not-an-X-ray guard.

23 images that ship with scikit-image (photos of people, animals, objects and scenes, textures,
microscopy, astronomy, a retina, scanned text pages) and 12 synthetic ones (blank, noise, gradients,
colour blocks, stripes, a rendered document), 35 in all, deterministic.

    python -m dataset_scripts.non_xray_images out/      # write them as PNG to look at
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

SKIMAGE_NAMES = ["astronaut", "brick", "camera", "chelsea", "checkerboard", "clock", "coffee", "coins", "colorwheel",
                 "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
                 "retina", "rocket", "text", "cell", "binary_blobs", "microaneurysms"]


def skimage_images() -> dict[str, Image.Image]:
    images = {}
    for name in SKIMAGE_NAMES:
        pixels = getattr(data, name)()
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        images[f"skimage_{name}"] = Image.fromarray(pixels).convert("RGB")
    return images


def rendered_document(size=(600, 800)) -> Image.Image:
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    for line in range(30):
        draw.text((40, 40 + line * 24), f"Line {line}: the quick brown fox jumps over the lazy dog. 0123456789",
                  fill="black")
    return page


def synthetic_images(size: int = 384) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    radial = np.hypot(yy - size / 2, xx - size / 2) / (size / 2 ** 0.5) * 255
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(size // 8, 0).repeat(size // 8, 1)
    arrays = {
        "blank_white": np.full((size, size), 255, np.uint8),
        "blank_black": np.zeros((size, size), np.uint8),
        "blank_grey": np.full((size, size), 128, np.uint8),
        "noise_uniform_grey": rng.integers(0, 256, (size, size), dtype=np.uint8),
        "noise_uniform_colour": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "noise_gaussian_grey": np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8),
        "gradient_horizontal": np.tile(ramp, (size, 1)).astype(np.uint8),
        "gradient_vertical": np.tile(ramp[:, None], (1, size)).astype(np.uint8),
        "gradient_radial": np.clip(radial, 0, 255).astype(np.uint8),
        "colour_blocks": blocks,
        "stripes": ((xx // 16) % 2 * 255).astype(np.uint8),
    }
    images = {name: Image.fromarray(pixels).convert("RGB") for name, pixels in arrays.items()}
    images["rendered_document"] = rendered_document()
    return images


def non_xray_images() -> dict[str, Image.Image]:
    """All 35 images, by name."""
    return skimage_images() | synthetic_images()


if __name__ == "__main__":
    destination = Path(sys.argv[1] if len(sys.argv) > 1 else "non_xray_images")
    destination.mkdir(parents=True, exist_ok=True)
    for image_name, image in non_xray_images().items():
        image.save(destination / f"{image_name}.png")
    print(f"wrote {len(non_xray_images())} images to {destination}")
