"""Training speed: the naive path (backbone on every image, every epoch) vs the feature cache, side by side.

Each configuration trains in its own process on the same data, epochs and seed: naive (`--cache_views 0`),
then the cache with each `--engines` extraction engine (default: eager PyTorch, then ONNX Runtime). The
script prints wall time, images through the backbone, peak RSS and test accuracy / ROC-AUC of each, the
ratios to naive, and a paired bootstrap interval of each ROC-AUC difference over the test images.

    python benchmarks/train_speed.py --data_dir ../shared/data/chest_xray_224 --train_subset 1000 --epochs 20
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from trainer.report import stratified_resamples  # noqa: E402


def subset_folder(data_dir: Path, train_images: int, seed: int) -> Path:
    """A Kaggle-layout folder of symlinks: `train_images` training images in the data's class ratio, all of test/."""
    root = Path(tempfile.mkdtemp(prefix="train-speed-"))
    for split in ("train", "test"):
        files = {c: sorted((data_dir / split / c).iterdir()) for c in ("NORMAL", "PNEUMONIA")}
        total = sum(map(len, files.values()))
        for class_name, paths in files.items():
            if split == "train" and train_images:
                paths = random.Random(seed).sample(paths, round(train_images * len(paths) / total))
            (root / split / class_name).mkdir(parents=True)
            for path in paths:
                (root / split / class_name / path.name).symlink_to(path.resolve())
    return root


def worker(trainer_args: list[str]) -> None:
    """Run the trainer in this process, counting images through the backbone; print the results as JSON."""
    import torch

    from serving.model import PneumoniaClassifier
    from trainer.features import Extractor, FeaturesAndStatistics
    from trainer.train import main

    counted = {"images": 0}

    def counting(method):
        def wrapper(self, pixel_values):
            if not torch.compiler.is_compiling():  # ONNX export traces the model: no images, and no fixed batch size
                counted["images"] += len(pixel_values)
            return method(self, pixel_values)
        return wrapper

    # Every backbone pass goes through one of these: training and test, eager extraction, ONNX Runtime extraction.
    for owner, name in ((PneumoniaClassifier, "forward_features"), (FeaturesAndStatistics, "forward"),
                        (Extractor, "run_onnx")):
        setattr(owner, name, counting(getattr(owner, name)))
    results = main(trainer_args)
    print("RESULT " + json.dumps({"backbone_images": counted["images"], "test_accuracy": results["test_accuracy"],
                                  "test_roc_auc": results["test_roc_auc"]}))


def measure(trainer_args: list[str], log: Path) -> dict:
    """Run the trainer in a subprocess (its log in `log`): results, wall seconds and peak RSS."""
    started = time.perf_counter()
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, __file__, "--worker", *trainer_args], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"trainer failed ({status}) for {trainer_args}:\n{output[-2000:]}\n"
                         f"{log.read_text()[-3000:]}")
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    return {**result, "seconds": time.perf_counter() - started, "peak_rss_mb": usage.ru_maxrss / 1024}


def test_scores(output_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = sorted(json.loads((output_dir / "test_predictions.json").read_text()), key=lambda row: row["path"])
    return np.array([row["label"] for row in rows]), np.array([row["pneumonia_probability"] for row in rows])


def first_lr_cut(output_dir: Path) -> int | None:
    """The first epoch whose learning rate is below the first epoch's (ReduceLROnPlateau fired), or None."""
    history = json.loads((output_dir / "training_history.json").read_text())["history"]
    return next((row["epoch"] for row in history if row["lr"] < history[0]["lr"]), None)


def paired_auc_difference(naive_dir: Path, cached_dir: Path, resamples: int = 2000) -> list[float]:
    """95% interval of ROC-AUC(cached) - ROC-AUC(naive), resampling test images (within each class) jointly."""
    labels, naive = test_scores(naive_dir)
    _, cached = test_scores(cached_dir)
    differences = [roc_auc_score(labels[index], cached[index]) - roc_auc_score(labels[index], naive[index])
                   for index in stratified_resamples(labels, resamples, seed=0)]
    return np.percentile(differences, [2.5, 97.5]).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224",
                        help="Kaggle-layout folder.")
    parser.add_argument("--train_subset", type=int, default=1000, help="Training images to use (0 = all of train/).")
    parser.add_argument("--epochs", type=int, default=20, help="Epochs for every run.")
    parser.add_argument("--cache_views", type=int, default=3, help="K for the cached runs.")
    parser.add_argument("--engines", nargs="+", default=["eager", "onnxruntime"],
                        choices=["eager", "onnxruntime"], help="One cached run per extraction engine.")
    parser.add_argument("--seed", type=int, default=42, help="Seed for the subset and every run.")
    args, rest = parser.parse_known_args()

    data = subset_folder(args.data_dir, args.train_subset, args.seed)
    output = Path(tempfile.mkdtemp(prefix="train-speed-out-"))
    common = ["--data_dir", str(data), "--no_pretrained", "--num_train_epochs", str(args.epochs),
              "--seed", str(args.seed), *rest]
    runs = {"naive": measure([*common, "--cache_views", "0", "--output_dir", str(output / "naive")],
                             output / "naive.log")}
    for engine in args.engines:
        runs[engine] = measure([*common, "--cache_views", str(args.cache_views), "--extraction_engine", engine,
                                "--output_dir", str(output / engine)], output / f"{engine}.log")
    naive = runs["naive"]

    print(f"data: {args.data_dir} ({args.train_subset or 'all'} train images, full test/), {args.epochs} epochs, "
          f"seed {args.seed}, no ImageNet weights, {os.cpu_count()} CPU cores; cached runs: K={args.cache_views}")
    print(f"{'':<22}" + "".join(f"{name:>14}" for name in runs) + "".join(f"{f'naive/{e}':>18}" for e in args.engines))
    for key, label in (("seconds", "wall time (s)"), ("backbone_images", "backbone images"),
                       ("peak_rss_mb", "peak RSS (MB)"), ("test_accuracy", "test accuracy"),
                       ("test_roc_auc", "test ROC-AUC")):
        ratios = [naive[key] / runs[e][key] if runs[e][key] else float("nan") for e in args.engines]
        print(f"{label:<22}" + "".join(f"{run[key]:>14.4g}" for run in runs.values())
              + "".join(f"{ratio:>17.2f}x" for ratio in ratios))
    for engine in args.engines:
        low, high = paired_auc_difference(output / "naive", output / engine)
        print(f"cached ({engine}): speed-up {naive['seconds'] / runs[engine]['seconds']:.2f}x; ROC-AUC difference "
              f"{runs[engine]['test_roc_auc'] - naive['test_roc_auc']:+.4f} (paired bootstrap 95% interval "
              f"[{low:+.4f}, {high:+.4f}]); first learning-rate cut: epoch {first_lr_cut(output / engine)} "
              f"(naive: epoch {first_lr_cut(output / 'naive')})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:])
    else:
        main()
