"""Which validation signal drives the plateau schedule and the best epoch: the default recipe (validation
accuracy, patience 5) vs the loss-driven alternative (`--metric_for_best_model loss --lr_patience 2`).

Per seed both recipes train on the same feature cache (so the same split, views, head initialisation and data
order: the runs are identical until the first learning-rate cut), then the script prints test ROC-AUC of
each, the paired bootstrap interval of the difference over the test images, the first epoch with a lowered
learning rate and the best epoch; and the mean difference over seeds. A run whose output folder already
holds all_results.json is reused, so the table can be printed again without training.

    python benchmarks/recipe_signal.py --data_dir ../shared/data/chest_xray_224 --seeds 42 43 44 --epochs 20
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from train_speed import REPO_ROOT, first_lr_cut, paired_auc_difference

RECIPES = {"default (accuracy, patience 5)": [],
           "loss, patience 2": ["--metric_for_best_model", "loss", "--lr_patience", "2"]}


def train(data_dir: Path, output_dir: Path, cache_dir: Path, seed: int, epochs: int, recipe: list[str]) -> dict:
    if not (output_dir / "all_results.json").is_file():
        subprocess.run([sys.executable, "-m", "trainer", "--data_dir", str(data_dir), "--no_pretrained",
                        "--num_train_epochs", str(epochs), "--seed", str(seed), "--cache_dir", str(cache_dir),
                        "--output_dir", str(output_dir), "--overwrite_output_dir", *recipe],
                       cwd=REPO_ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((output_dir / "all_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--output_dir", type=Path, default=Path("recipe-signal"),
                        help="One folder per run (RECIPE-SEED) and the shared feature cache.")
    args = parser.parse_args()

    default, alternative = RECIPES
    differences = []
    print("| seed | recipe | test ROC-AUC | first lowered lr | best epoch |\n|---|---|---:|---|---:|")
    for seed in args.seeds:
        folders = {name: args.output_dir / f"{'default' if name == default else 'loss'}-{seed}" for name in RECIPES}
        for name, folder in folders.items():
            results = train(args.data_dir, folder, args.output_dir / "feature_cache", seed, args.epochs, RECIPES[name])
            print(f"| {seed} | {name} | {results['test_roc_auc']:.4f} | epoch {first_lr_cut(folder) or 'none'} "
                  f"| {results['best_epoch']} |")
        low, high = paired_auc_difference(folders[alternative], folders[default])
        auc = {name: json.loads((folder / "all_results.json").read_text())["test_roc_auc"]
               for name, folder in folders.items()}
        differences.append(auc[default] - auc[alternative])
        print(f"| {seed} | default − loss | {differences[-1]:+.4f} [{low:+.4f}, {high:+.4f}] | | |")
    print(f"\nmean ROC-AUC difference (default − loss) over seeds {args.seeds}: {np.mean(differences):+.4f} "
          f"(target: within ±0.01)")


if __name__ == "__main__":
    main()
