"""Full-resolution Kaggle originals: decode at reduced scale (JPEG draft) or resize the folder once?

The 224x224 shared copy cannot show this, so the script makes full-size stand-ins: real X-rays upscaled
(bicubic) to the originals' sizes (width 1,000-2,900 px, height 0.7-0.9 of it, 8-bit grey, JPEG
quality 90). Upscaled images are smoother than real ones and decode somewhat faster, so the full-decode
times here are a lower bound. Per image, side by side in one run:

- full:    decode every pixel, then the model's preprocessing (the pipeline before draft mode);
- draft:   decode at the smallest 1/2, 1/4, 1/8 scale still >= 224 px (what the trainer, CLI and app do now);
- resized: `dataset_scripts/resize_dataset.py` once (its cost per image is shown), then decode the 224 px copy.

It then prices the decoding of a full-data run on one core: 20 naive epochs, and the cached default
(3 views of train, validation and test once).

    python benchmarks/full_resolution.py --images 60
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dataset_scripts.resize_dataset import resize_image  # noqa: E402
from serving.images import read_image as load_image  # noqa: E402
from serving.preprocessing import eval_transform, preprocessing_config  # noqa: E402

SOURCES = [REPO_ROOT.parent / "shared" / "data" / "chest_xray_224" / "train", REPO_ROOT / "sample_data" / "chest_xray" / "train"]
# Image decodes of a full-data run: train 4,695 + validation 521 (carved from train/'s 5,216) and test 624.
NAIVE_DECODES = 20 * (4695 + 521) + 624  # every epoch decodes train and validation again
CACHED_DECODES = 3 * 4695 + 521 + 624  # K = 3 training views, validation and test once


def full_size_stand_ins(folder: Path, count: int, seed: int = 0) -> list[Path]:
    source = next(s for s in SOURCES if s.is_dir())
    rng = random.Random(seed)
    paths = []
    for i, original in enumerate(rng.sample(sorted(source.glob("*/*.jpeg")), count)):
        width = rng.randint(1000, 2900)
        height = int(width * rng.uniform(0.7, 0.9))
        path = folder / f"{i:04d}.jpeg"
        Image.open(original).convert("L").resize((width, height), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def median_ms(function, paths) -> float:
    times = []
    for path in paths:
        started = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60, help="Full-size stand-ins to make and time.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    preprocessing = preprocessing_config("resnet18")
    transform, size = eval_transform(preprocessing), tuple(preprocessing["input_size"][1:])

    with tempfile.TemporaryDirectory() as folder:
        paths = full_size_stand_ins(Path(folder), args.images)
        resized_dir = Path(folder) / "resized"
        resized_dir.mkdir()
        resized = [resized_dir / p.name for p in paths]
        full = median_ms(lambda p: transform(load_image(p)), paths)
        drafted = median_ms(lambda p: transform(load_image(p, size)), paths)
        resize_once = median_ms(lambda p: resize_image(p, resized_dir / p.name, size[0]), paths)
        small = median_ms(lambda p: transform(load_image(p)), resized)
        difference = max((transform(load_image(p)) - transform(load_image(p, size))).abs().mean().item() for p in paths)
        mean_kb = statistics.mean(p.stat().st_size for p in paths) / 1024

    print(f"{args.images} full-size stand-ins, mean {mean_kb:.0f} KB; 1 thread; ms per image (median)")
    print(f"{'path':<36}{'ms/image':>10}{'vs full':>9}{'20 naive epochs':>17}{'cached K=3':>12}")
    for name, per_image, once in (("full decode + preprocess", full, 0.0),
                                  ("draft decode + preprocess (adopted)", drafted, 0.0),
                                  ("resize once, then 224 px decode", small, resize_once)):
        naive, cached = ((once * (4695 + 521 + 624) + decodes * per_image) / 60_000
                         for decodes in (NAIVE_DECODES, CACHED_DECODES))
        print(f"{name:<36}{per_image:>10.2f}{full / per_image:>8.1f}x{naive:>14.1f} min{cached:>9.1f} min")
    print(f"resize once: {resize_once:.2f} ms per image (included in its totals above)")
    print(f"mean |full - draft| of the preprocessed tensor, worst image: {difference:.4f} (normalised units)")


if __name__ == "__main__":
    main()
