"""A small site's guarantees: the conformal guard and the Clopper-Pearson operating point vs today's (before issue 39),
side by side on the same trained models, for N images per class.

    python benchmarks/small_sites.py --data_dir ../shared/data/chest_xray_224 [--sizes 20 50 150 500 full]

For each N, `--subsamples` random draws of whole patients (N images per class) from the shared train/ folder are
trained with the defaults (`--no_pretrained`: no ImageNet weights here) and `--threshold_strategy
sensitivity:0.95@0.95`; "full" trains on all of train/. Every model is then measured twice on the untouched shared
test/ folder and on the project's non-X-ray images:
- new: the model as saved (conformal guard limit at alpha 0.005, the bounded threshold, both calibrated on the
  validation images and, below 200 of them, the cross-fitted training images);
- new, alpha 0.02: the same, with the guard's limit read off the run's calibration distances (splits.json) for
  --guard_false_refusal 0.02;
- today: the same weights and guard statistics with the limit at the 0.995 quantile of the validation images'
  distances, and the threshold `sensitivity:0.95` (the point estimate) with the temperature fitted on validation.
Printed: the mean over subsamples of false refusals of real X-rays (test/, and 600 X-rays of train/'s patients that
the draw left out, which are exchangeable with the draw's), refusals of non-X-rays, test sensitivity and
specificity at the threshold, test ROC-AUC, and for `new` how often the bound was reachable and how often the
realised test sensitivity reached 0.95 when it was.
"""

import argparse
import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dataset_scripts.non_xray_images import non_xray_images  # noqa: E402
from serving import PneumoniaClassifier, Predictor  # noqa: E402
from serving.labels import LABELS, POSITIVE_INDEX  # noqa: E402
from trainer.calibration import choose_threshold, fit_temperature  # noqa: E402
from trainer.data import patient_id  # noqa: E402
from trainer.feature_guard import conformal_limit  # noqa: E402
from trainer.recalibrate import site_logits  # noqa: E402

TARGET = 0.95
TODAY_QUANTILE = 0.995
UNSEEN_XRAYS = 600
SMALL_SITE_ALPHA = 0.02  # the tolerance for a small site's false refusals, as --guard_false_refusal


def drawn_images(data_dir: Path, per_class: int | None, seed: int) -> list[Path]:
    """train/'s images of whole patients drawn at random until `per_class` images per class (all when None)."""
    rng = random.Random(seed)
    chosen = []
    for label in LABELS:
        by_patient = defaultdict(list)
        for path in sorted((data_dir / "train" / label).glob("*.jpeg")):
            by_patient[patient_id(path.name)].append(path)
        patients = sorted(by_patient)
        rng.shuffle(patients)
        taken = []
        for patient in patients:
            if per_class is not None and len(taken) >= per_class:
                break
            taken += by_patient[patient]
        chosen += taken
    return chosen


def subsample(data_dir: Path, destination: Path, per_class: int | None, seed: int) -> Path:
    """A Kaggle-layout folder of symlinks: the drawn images (drawn_images) and the whole test/ folder."""
    for path in drawn_images(data_dir, per_class, seed):
        (destination / "train" / path.parent.name).mkdir(parents=True, exist_ok=True)
        (destination / "train" / path.parent.name / path.name).symlink_to(path)
    (destination / "test").symlink_to(data_dir / "test")
    return destination


def train(data: Path, output_dir: Path, seed: int) -> dict:
    command = [sys.executable, "-m", "trainer", "--data_dir", str(data), "--output_dir", str(output_dir),
               "--no_pretrained", "--seed", str(seed), "--threshold_strategy", f"sensitivity:{TARGET}@0.95"]
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((output_dir / "all_results.json").read_text())


def measure(output_dir: Path, data: Path, data_dir: Path, results: dict) -> dict[str, dict]:
    """{"new": ..., "today": ...}: guard refusals, sensitivity, specificity and ROC-AUC on test, for both ways."""
    model = PneumoniaClassifier.from_pretrained(output_dir / "best")
    predictor = Predictor(model)
    splits = json.loads((output_dir / "splits.json").read_text())
    validation = [data / "train" / name for name in splits["validation"]]
    val_labels = np.array([LABELS.index(path.parent.name) for path in validation])
    test = sorted((data / "test").glob("*/*.jpeg"))
    test_labels = np.array([LABELS.index(path.parent.name) for path in test])
    val_logits, val_distances = site_logits(predictor, validation, 64, 2)
    test_logits, test_distances = site_logits(predictor, test, 64, 2)
    others = np.array([predictor.analyse(image).guard_distance for image in non_xray_images().values()])
    # X-rays of train/'s other patients: exchangeable with the draw's (test/ is a population of its own)
    drawn = {path.name for path in (data / "train").glob("*/*.jpeg")}
    unseen = [path for path in sorted(data_dir.glob("train/*/*.jpeg")) if path.name not in drawn]
    unseen = random.Random(0).sample(unseen, min(UNSEEN_XRAYS, len(unseen)))
    unseen_distances = site_logits(predictor, unseen, 64, 2)[1] if unseen else np.array([np.nan])

    temperature = fit_temperature(val_logits, torch.from_numpy(val_labels))
    val_scores = (val_logits / temperature).softmax(dim=-1)[:, POSITIVE_INDEX].numpy()
    calibration = np.array(splits["calibration"]["guard_distances"])
    assert abs(conformal_limit(calibration, results["guard_false_refusal"])[0] - float(model.guard_threshold)) < 1e-3
    ways = {"new": (float(model.guard_threshold), float(model.temperature), model.threshold),
            "new, alpha 0.02": (conformal_limit(calibration, SMALL_SITE_ALPHA)[0], float(model.temperature),
                                model.threshold),
            "today": (float(np.quantile(val_distances, TODAY_QUANTILE)), temperature,
                      choose_threshold(val_labels, val_scores, f"sensitivity:{TARGET}"))}
    measured = {}
    for way, (limit, way_temperature, threshold) in ways.items():
        scores = (test_logits / way_temperature).softmax(dim=-1)[:, POSITIVE_INDEX].numpy()
        decided = scores >= threshold
        measured[way] = {"xrays_refused": float(np.mean(test_distances > limit)),
                         "unseen_refused": float(np.mean(unseen_distances > limit)) if unseen else float("nan"),
                         "non_xrays_refused": float(np.mean(others > limit)),
                         "sensitivity": float(decided[test_labels == POSITIVE_INDEX].mean()),
                         "specificity": float((~decided)[test_labels != POSITIVE_INDEX].mean()),
                         "roc_auc": float(roc_auc_score(test_labels, scores))}
    measured["new"] |= {"bound_reached": results["sensitivity_bound_reached"],
                        "calibration_images": results["guard_calibration_images"],
                        "achievable": results["guard_false_refusal_achievable"]}
    return measured


def draws_parser(description: str, work_dir: Path) -> argparse.ArgumentParser:
    """The command line of a benchmark over small-site draws: the data, the sizes, draws per size, a work folder."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--sizes", nargs="+", default=["20", "50", "150", "500", "full"])
    parser.add_argument("--subsamples", type=int, default=5, help="Random draws per size (full: one run).")
    parser.add_argument("--work_dir", type=Path, default=work_dir)
    return parser


def main() -> None:
    args = draws_parser(__doc__, Path("/tmp/small_sites")).parse_args()
    runs = defaultdict(list)
    for size in args.sizes:
        for draw in range(1 if size == "full" else args.subsamples):
            folder = args.work_dir / f"{size}-{draw}"
            if not (folder / "out" / "all_results.json").is_file():
                data = subsample(args.data_dir, folder / "data", None if size == "full" else int(size), draw)
                results = train(data, folder / "out", 42 + draw)
            else:
                results = json.loads((folder / "out" / "all_results.json").read_text())
            runs[size].append(measure(folder / "out", folder / "data", args.data_dir, results))
            print(size, draw, json.dumps(runs[size][-1]), flush=True)
    (args.work_dir / "small_sites.json").write_text(json.dumps(runs, indent=1))
    print(f"\n{'N/class':>8} {'way':>16} {'X-rays refused':>15} {'unseen train':>12} {'non-X-rays refused':>19} "
          f"{'sensitivity':>12} {'specificity':>12} {'ROC-AUC':>8}  bound reached / realised sens >= {TARGET} when reached")
    for size, measured in runs.items():
        for way in ("today", "new", "new, alpha 0.02"):
            mean = {key: np.mean([m[way][key] for m in measured]) for key in measured[0][way] if key != "bound_reached"}
            line = (f"{size:>8} {way:>16} {mean['xrays_refused']:>15.3f} {mean['unseen_refused']:>12.3f} "
                    f"{mean['non_xrays_refused']:>19.3f} "
                    f"{mean['sensitivity']:>12.3f} {mean['specificity']:>12.3f} {mean['roc_auc']:>8.3f}")
            if way == "new":
                reached = [m for m in measured if m["new"]["bound_reached"]]
                line += (f"  {len(reached)}/{len(measured)} / {sum(m['new']['sensitivity'] >= TARGET for m in reached)}"
                         f"/{len(reached)}; n = {mean['calibration_images']:.0f}, achievable {mean['achievable']:.4f}")
            print(line)


if __name__ == "__main__":
    main()
