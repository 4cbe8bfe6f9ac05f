"""Recalibrate a trained model for a new site without retraining: refit the temperature, the decision threshold
and the not-an-X-ray guard's limit on the site's own labelled images (no weight changes).

    python -m trainer.recalibrate --model outputs --data_dir SITE_DIR --output_dir outputs-site [--threshold_strategy youden]

SITE_DIR holds `NORMAL/` and `PNEUMONIA/` (JPEG, PNG or DICOM; at least MIN_IMAGES_PER_CLASS each). OUTPUT_DIR
gets a run folder that every loader reads (`best/`) and `python -m trainer.push OUTPUT_DIR` pushes, plus
`recalibration.json` (what changed; the site's metrics before and after, with bootstrap intervals) and
`recalibration_reliability.png`. The "after" metrics are cross-fitted: each image is scored by a temperature
and threshold fitted on the other folds (grouped by patient), so they are not flattered by fitting and
scoring on the same images. The site's images are its own chest X-rays, so the guard's limit becomes the conformal
quantile of their distances (--guard_false_refusal); `--threshold_strategy sensitivity:T@C` bounds the sensitivity
on the site's positives (Clopper-Pearson). Research demo, not for clinical use.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download
from sklearn.model_selection import StratifiedGroupKFold
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from serving.batch import ImageStream, collate
from serving.images import ACCEPTED_SUFFIXES, ArchiveWalk
from serving.labels import LABELS, POSITIVE_INDEX
from serving.loading import ModelNotFound, add_model_argument, load_model
from serving.predictor import Predictor

from .calibration import brier_score, check_threshold_strategy, expected_calibration_error, fit_operating_point
from .data import indented, patient_id
from .evaluation import write_json
from .feature_guard import conformal_limit
from .model_card import write_model_card
from .options import GuardOption, InferenceOptions, SeedOption, add_options
from .push import RUN_FILES
from .report import bootstrap_intervals, plot_reliability, screening_metrics

MIN_IMAGES_PER_CLASS = 20
CROSS_FIT_FOLDS = 5


class SiteDataError(ValueError):
    """The site folder cannot be used for recalibration; nothing has been written."""


def site_images(site_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The image files of SITE_DIR/NORMAL and SITE_DIR/PNEUMONIA and their labels; SiteDataError for a wrong
    layout or too few images of a class."""
    if not site_dir.is_dir():
        raise SiteDataError(f"Site folder {site_dir} does not exist.")
    missing = [name for name in LABELS if not (site_dir / name).is_dir()]
    if missing:
        found = sorted(p.name + "/" for p in site_dir.iterdir() if p.is_dir())
        raise SiteDataError(f"{site_dir} must hold the labelled folders {' and '.join(n + '/' for n in LABELS)} "
                            f"directly; {', '.join(missing)} missing (found: {', '.join(found) or 'no folders'}). "
                            "For a Kaggle-layout folder pass its test/ (or another labelled) subfolder.")
    paths, labels = [], []
    for label, name in enumerate(LABELS):
        files = list(ArchiveWalk([site_dir / name]).images())
        if len(files) < MIN_IMAGES_PER_CLASS:
            raise SiteDataError(f"{site_dir / name} holds {len(files)} images; recalibration needs at least "
                                f"{MIN_IMAGES_PER_CLASS} per class ({', '.join(ACCEPTED_SUFFIXES)}).")
        paths += files
        labels += [label] * len(files)
    return paths, np.array(labels)


@torch.inference_mode()
def site_logits(predictor: Predictor, paths: list[Path], batch_size: int,
                num_workers: int) -> tuple[torch.Tensor, np.ndarray]:
    """Raw logits and not-an-X-ray guard distances of every image; SiteDataError naming every unreadable file."""
    logits, distances, failures = [None] * len(paths), [None] * len(paths), []
    loader = DataLoader(ImageStream(list(enumerate(paths)), predictor, keep_images=False), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    for readable, pixels, unreadable in tqdm(loader, desc="site images", unit="batch"):
        failures += [f"{item.path}: {item.error}" for item in unreadable]
        if pixels is not None:
            batch_logits, statistics, _ = predictor.forward(pixels)
            for item, item_logits, distance in zip(readable, batch_logits, predictor.guard_distances(statistics)):
                logits[item.index], distances[item.index] = item_logits.float().cpu(), float(distance)
    if failures:
        raise SiteDataError(f"{len(failures)} site image(s) cannot be read; fix or remove them:{indented(failures)}")
    return torch.stack(logits), np.array(distances)


def cross_fitted(logits: torch.Tensor, labels: np.ndarray, groups: list[str], strategy: str,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the calibrated score and the threshold from an operating point fitted without its fold."""
    scores, thresholds = np.zeros(len(labels)), np.zeros(len(labels))
    folds = StratifiedGroupKFold(n_splits=CROSS_FIT_FOLDS, shuffle=True, random_state=seed)
    for fit_on, held_out in folds.split(np.zeros(len(labels)), labels, groups):
        temperature, threshold, _ = fit_operating_point(logits[fit_on], labels[fit_on], strategy)
        scores[held_out] = (logits[held_out] / temperature).softmax(dim=-1)[:, POSITIVE_INDEX].numpy()
        thresholds[held_out] = threshold
    return scores, thresholds


def site_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: float | np.ndarray, seed: int) -> dict:
    metrics = screening_metrics(labels, (scores >= thresholds).astype(int), scores)
    return {**{k: float(v) for k, v in metrics.items()}, "ece": expected_calibration_error(labels, scores),
            "brier": brier_score(labels, scores), "ci95": bootstrap_intervals(labels, scores, thresholds, seed=seed)}


def model_and_run_files(model_id: str) -> tuple[str, Path | None]:
    """The loadable model behind `model_id` (a run folder, its best/, or a Hub repo) and the folder holding the
    run's files (all_results.json, plots...), if any, so that the output can be pushed with trainer.push."""
    path = Path(model_id)
    if (path / "best").is_dir():
        return str(path / "best"), path
    if path.is_dir():
        return model_id, path.parent if (path.parent / "all_results.json").is_file() else None
    try:  # a Hub repo keeps the run's files next to the model
        return model_id, Path(snapshot_download(model_id, allow_patterns=RUN_FILES))
    except Exception:  # offline, unknown repo: load_model reports it
        return model_id, None


def recalibrate(model_id: str, site_dir: Path, output_dir: Path, strategy: str,
                batch_size: int = InferenceOptions.per_device_eval_batch_size,
                num_workers: int = InferenceOptions.num_workers, seed: int = SeedOption.seed,
                guard_false_refusal: float = GuardOption.guard_false_refusal) -> dict:
    """Refit temperature and threshold on the site's images; write OUTPUT_DIR; return the report."""
    paths, labels = site_images(site_dir)
    model_path, run_files = model_and_run_files(model_id)
    model = load_model(model_path)
    predictor = Predictor(model)
    logits, distances = site_logits(predictor, paths, batch_size, num_workers)

    before = {"temperature": float(model.temperature), "threshold": model.threshold,
              "guard_limit": float(model.guard_threshold)}
    temperature, threshold, bound = fit_operating_point(logits, labels, strategy)
    # the site's labelled images are its own chest X-rays: the guard's limit is refitted on them, conformally
    guard_limit, achievable = conformal_limit(distances, guard_false_refusal)
    scores_before = predictor.probabilities(logits)[:, POSITIVE_INDEX].numpy()
    scores_after, thresholds_after = cross_fitted(logits, labels, [patient_id(p.name) for p in paths], strategy, seed)
    report = {
        "model": model_id, "site_dir": str(site_dir), "threshold_strategy": strategy,
        "site_images": {name: int((labels == i).sum()) for i, name in enumerate(LABELS)},
        "site_images_flagged_not_xray": int((distances > before["guard_limit"]).sum()),
        "changed": {"temperature": [before["temperature"], temperature], "threshold": [before["threshold"], threshold],
                    "guard_limit": [before["guard_limit"], guard_limit]},
        "unchanged": "all weights, the preprocessing and the not-an-X-ray guard's mean and covariance",
        "guard_false_refusal": guard_false_refusal, "guard_false_refusal_achievable": achievable,
        "guard_calibration_images": len(distances), **(bound.results() if bound else {}),
        **({"sensitivity_guarantee": bound.sentence()} if bound else {}),
        "before": site_metrics(labels, scores_before, before["threshold"], seed),
        "after_cross_fitted": site_metrics(labels, scores_after, thresholds_after, seed),
        "after_procedure": f"{CROSS_FIT_FOLDS}-fold cross-fitting grouped by patient (file-name pattern; other "
                           "names count as their own patient): each image scored with a temperature and threshold "
                           "fitted on the other folds. The saved model's are fitted on all site images.",
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    if run_files is not None:
        for name in RUN_FILES:
            if (run_files / name).is_file():
                shutil.copy(run_files / name, output_dir / name)
    model.set_operating_point(temperature, threshold)
    model.guard_threshold.fill_(guard_limit)
    model.save_pretrained(output_dir / "best")
    write_json(report, output_dir / "recalibration.json")
    if run_files is not None:  # the card needs the run's results; it says the model was recalibrated
        write_model_card(output_dir, str(output_dir / "best"))
    plot_reliability(labels, scores_before, scores_after, output_dir / "recalibration_reliability.png",
                     f"Reliability on the site's images (n={len(labels)})",
                     ("before recalibration", "after recalibration (cross-fitted)"))
    return report


def summary(report: dict) -> str:
    (t0, t1), (h0, h1) = report["changed"]["temperature"], report["changed"]["threshold"]
    (g0, g1) = report["changed"]["guard_limit"]
    lines = [f"temperature {t0:.3f} -> {t1:.3f}; threshold {h0:.3f} -> {h1:.3f}; guard limit {g0:.2f} -> {g1:.2f}, "
             f"refusing at most {report['guard_false_refusal_achievable']:.3g} of the site's X-rays (weights unchanged)",
             f"{'site metric':<14}{'before':>22}{'after (cross-fitted)':>26}"]
    if "sensitivity_guarantee" in report:
        lines.insert(1, f"threshold: {report['sensitivity_guarantee']}")
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        cells = [f"{part[key]:.3f} [{part['ci95'][key][0]:.3f}, {part['ci95'][key][1]:.3f}]"
                 for part in (report["before"], report["after_cross_fitted"])]
        lines.append(f"{key:<14}{cells[0]:>22}{cells[1]:>26}")
    lines.append(f"{'ece':<14}{report['before']['ece']:>22.3f}{report['after_cross_fitted']['ece']:>26.3f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser, default="outputs", run_folder=True)
    parser.add_argument("--data_dir", required=True, help="The site's folder with labelled NORMAL/ and PNEUMONIA/.")
    parser.add_argument("--output_dir", required=True, help="Where the recalibrated run folder is written.")
    parser.add_argument("--threshold_strategy", default="youden",
                        help="youden, sensitivity:T, sensitivity:T@C (a Clopper-Pearson bound at confidence C) or "
                             "fixed:V, chosen on the site's images (default: youden).")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Write into an --output_dir that holds a model.")
    add_options(parser, InferenceOptions, SeedOption, GuardOption)
    args = parser.parse_args(argv)

    try:
        check_threshold_strategy(args.threshold_strategy)
    except ValueError as error:
        parser.error(str(error))
    output_dir = Path(args.output_dir)
    try:
        if (output_dir / "best").exists() and not args.overwrite_output_dir:
            raise SiteDataError(f"{output_dir} already holds a model (best/); choose another --output_dir or pass "
                                "--overwrite_output_dir.")
        report = recalibrate(args.model, Path(args.data_dir), output_dir, args.threshold_strategy,
                             args.per_device_eval_batch_size, args.num_workers, args.seed, args.guard_false_refusal)
    except (SiteDataError, ModelNotFound) as error:
        sys.exit(f"error: {error}")
    print(summary(report))
    print(f"wrote {output_dir / 'best'}, recalibration.json and recalibration_reliability.png to {output_dir}")
    return report


if __name__ == "__main__":
    main()
