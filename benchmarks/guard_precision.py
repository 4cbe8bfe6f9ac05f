"""The not-an-X-ray guard's precision as the trainer computes it (Ledoit-Wolf on the float32 statistics it caches,
whose pseudo-inverse leaves out the directions of least variance) vs the same estimate in float64 (every direction
kept), side by side on one trained run's own images.

    python benchmarks/guard_precision.py --run /tmp/small_sites/full-0 [--run ...]

RUN is a folder of benchmarks/small_sites.py (`data/` and `out/`). The guard is refitted both ways on the run's
training images (up to GUARD_FIT_IMAGES, as the trainer does); its limit is taken both ways from the run's validation
images only (the 0.995 quantile, and the conformal limit at alpha 0.005 and 0.02), so that no cross-fitting enters.
Printed per run: the share of the shared test/ X-rays and of the project's non-X-ray images refused.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dataset_scripts.non_xray_images import non_xray_images  # noqa: E402
from serving import PneumoniaClassifier, Predictor  # noqa: E402
from serving.batch import ImageStream, collate  # noqa: E402
from trainer.feature_guard import GUARD_FIT_IMAGES, conformal_limit, fit_guard_distribution, guard_distances  # noqa: E402


def statistics(predictor: Predictor, paths: list[Path]) -> np.ndarray:
    """The guard statistics (N, S) of image files, in float32 as the trainer caches them."""
    rows = [None] * len(paths)
    loader = DataLoader(ImageStream(list(enumerate(paths)), predictor, keep_images=False), batch_size=64,
                        num_workers=2, collate_fn=collate)
    for readable, pixels, _ in loader:
        for item, row in zip(readable, predictor.forward(pixels)[1]):
            rows[item.index] = row.float().numpy()
    return np.stack(rows)


def image_statistics(predictor: Predictor, images: list) -> np.ndarray:
    pixels = torch.stack([predictor.model.transform(image) for image in images])
    return predictor.forward(pixels)[1].float().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, nargs="+", required=True)
    args = parser.parse_args()
    print(f"{'run':>12} {'precision':>9} {'limit':>13} {'X-rays refused':>15} {'non-X-rays refused':>19}")
    for run in args.run:
        predictor = Predictor(PneumoniaClassifier.from_pretrained(run / "out" / "best"))
        splits = json.loads((run / "out" / "splits.json").read_text())
        train = [run / "data" / "train" / name for name in splits["train"]]
        train = [train[i] for i in np.random.default_rng(0).permutation(len(train))[:GUARD_FIT_IMAGES]]
        fitted, validation, test = (statistics(predictor, paths) for paths in (
            train, [run / "data" / "train" / name for name in splits["validation"]],
            sorted((run / "data" / "test").glob("*/*.jpeg"))))
        others = image_statistics(predictor, list(non_xray_images().values()))
        for dtype in (np.float32, np.float64):
            mean, precision = fit_guard_distribution(fitted.astype(dtype))
            distances = {name: guard_distances(part.astype(np.float64), mean, precision.double())
                         for name, part in (("validation", validation), ("test", test), ("others", others))}
            limits = {"quantile .995": float(np.quantile(distances["validation"], 0.995)),
                      **{f"alpha {alpha}": conformal_limit(distances["validation"], alpha)[0] for alpha in (0.005, 0.02)}}
            for name, limit in limits.items():
                print(f"{run.name:>12} {np.dtype(dtype).name:>9} {name:>13} {np.mean(distances['test'] > limit):>15.3f} "
                      f"{np.mean(distances['others'] > limit):>19.3f}", flush=True)


if __name__ == "__main__":
    main()
