"""Measure the not-an-X-ray guard: how many real test X-rays it refuses, and how many non-X-rays it stops.

    python benchmarks/ood_guard.py --model outputs/best --data_dir ../shared/data/chest_xray_224
Targets: at most 1% of test X-rays refused; at least 95% of the 35 non-X-ray images refused.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dataset_scripts.non_xray_images import non_xray_images  # noqa: E402
from trainer import PneumoniaClassifier, Predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer (guard fitted).")
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224",
                        help="Kaggle-layout folder; its test/ X-rays are the in-distribution set.")
    args = parser.parse_args()
    model = PneumoniaClassifier.from_pretrained(args.model)
    predictor = Predictor(model)

    xrays = sorted((args.data_dir / "test").glob("*/*.jpeg"))
    refused_xrays = [p.name for p in xrays if not predictor.analyse(p).looks_like_xray]
    others = {name: predictor.analyse(image) for name, image in non_xray_images().items()}
    missed = {name: round(answer.guard_distance, 1) for name, answer in others.items() if answer.looks_like_xray}

    print(f"guard threshold (Mahalanobis distance): {float(model.guard_threshold):.2f}")
    print(f"test X-rays refused: {len(refused_xrays)}/{len(xrays)} = {len(refused_xrays) / len(xrays):.2%} (target <= 1%)")
    stopped = len(others) - len(missed)
    print(f"non-X-ray images refused: {stopped}/{len(others)} = {stopped / len(others):.2%} (target >= 95%)")
    if missed:
        print(f"accepted as X-rays: {missed}")


if __name__ == "__main__":
    main()
