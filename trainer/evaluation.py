"""Test-set evaluation: the project's evaluate metric, a confusion-matrix plot and a printed table.

Training ends with this evaluation; to evaluate a saved model again (or on another folder):

    python -m trainer.evaluation --model outputs/best --data_dir path/to/chest_xray --output_dir outputs/eval
"""

import argparse
import json
import sys
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
from accelerate import Accelerator

from serving.guard import mahalanobis
from serving.labels import POSITIVE_INDEX
from serving.loading import ModelNotFound, add_model_argument, load_model
from serving.predictor import Predictor

from .calibration import brier_score, expected_calibration_error
from .data import BUNDLED_SAMPLE, DatasetLayoutError, load_chest_xray, make_loader
from .features import Extractor, resolve_engine
from .options import ExtractionOption, InferenceOptions, add_options
from .report import bootstrap_intervals, plot_confusion_matrix, plot_precision_recall, plot_reliability, plot_roc

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "pneumonia_metrics.py"


def load_metric() -> evaluate.EvaluationModule:
    """The project's metric module, loaded by path (works offline)."""
    return evaluate.load(str(METRIC_PATH))


def predict_logits(model, loader, accelerator: Accelerator, engine: str) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and not-an-X-ray guard distances of every sample once, in loader order, gathered across processes: the
    backbone through `engine` (trainer/features.py), then the head and the guard."""
    features, statistics = Extractor(model, resolve_engine(engine, accelerator))(loader, accelerator, "test")
    distances = mahalanobis(torch.from_numpy(statistics), model.guard_mean.cpu(), model.guard_precision.cpu()).numpy()
    return head_logits(model, features, accelerator), distances


@torch.inference_mode()
def head_logits(model, features: np.ndarray, accelerator: Accelerator) -> torch.Tensor:
    """The classifier head on extracted backbone features (N, D): logits (N, 2) on the CPU."""
    return model.head(torch.from_numpy(features).to(accelerator.device)).float().cpu()


def compute_metrics(labels: np.ndarray, scores: np.ndarray, predictions: np.ndarray) -> dict:
    """Screening metrics of PNEUMONIA (1) / NORMAL (0) predictions and PNEUMONIA-probability scores."""
    return load_metric().compute(predictions=predictions, references=labels, scores=scores)


def results_table(results: dict) -> str:
    """A readable summary of all_results.json."""
    lines = [f"{'metric':<22}{'value':>10}"]
    for key in ("test_accuracy", "test_roc_auc", "test_sensitivity", "test_specificity", "test_f1"):
        lines.append(f"{key:<22}{results[key]:>10.4f}")
    (tn, fp), (fn, tp) = results["test_confusion_matrix"]
    lines += ["confusion matrix (rows true, cols predicted; NORMAL, PNEUMONIA):",
              f"  NORMAL    {tn:>5} {fp:>5}", f"  PNEUMONIA {fn:>5} {tp:>5}",
              f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name in results["test_confusion_matrix_labels"]:
        row = results["test_classification_report"][name]
        lines.append(f"{name:<12}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1-score']:>10.4f}{row['support']:>10.0f}")
    return "\n".join(lines)


def write_json(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def evaluate_on_test(accelerator: Accelerator, model_dir: str | Path, test: datasets.Dataset, test_dir: Path,
                     output_dir: Path, batch_size: int, num_workers: int, engine: str = "auto") -> dict:
    """Evaluate a saved model on the test split at its threshold and at 0.5, with intervals and plots.

    Writes per-image predictions and the ROC, PR and reliability plots; returns `test_` metrics.
    """
    model = load_model(str(model_dir)).to(accelerator.device)
    loader = accelerator.prepare(make_loader(test, model.transform, batch_size, False, num_workers))
    labels, (logits, distances) = np.array(test["label"]), predict_logits(model, loader, accelerator, engine)
    # Calibration and decision exactly as the app, the CLI and PneumoniaClassifier.predict make them
    predictor = Predictor(model, engine="eager")  # only its calibration and decision: the logits are made above
    scores = predictor.probabilities(logits)[:, POSITIVE_INDEX].numpy()
    decisions = np.array([model.labels.index(predictor.decide(score)) for score in scores])
    raw_scores = logits.softmax(dim=-1)[:, POSITIVE_INDEX].numpy()
    results = {f"test_{key}": value for key, value in compute_metrics(labels, scores, decisions).items()}
    at_half = (scores >= 0.5).astype(np.int64)
    results |= {f"test_at_0.5_{key}": value for key, value in compute_metrics(labels, scores, at_half).items()
                if key in ("accuracy", "sensitivity", "specificity", "f1", "confusion_matrix")}
    results |= {"test_samples": int(len(labels)), "decision_threshold": model.threshold,
                "temperature": float(model.temperature),
                "test_ece_before_calibration": expected_calibration_error(labels, raw_scores),
                "test_ece_after_calibration": expected_calibration_error(labels, scores),
                "test_brier_before_calibration": brier_score(labels, raw_scores),
                "test_brier_after_calibration": brier_score(labels, scores),
                "test_ci95": bootstrap_intervals(labels, scores, model.threshold),
                # every test image is a real chest X-ray: the share the guard refuses is its false-refusal rate
                "test_guard_false_refusal_rate": float(np.mean(distances > float(model.guard_threshold)))}
    if accelerator.is_main_process:
        write_json([{"path": str(test_dir / name), "label": int(label), "pneumonia_probability": float(score)}
                    for name, label, score in zip(test["file_name"], labels, scores)],
                   output_dir / "test_predictions.json")
        plot_roc(labels, scores, model.threshold, output_dir / "roc_curve.png")
        plot_precision_recall(labels, scores, output_dir / "pr_curve.png")
        plot_reliability(labels, raw_scores, scores, output_dir / "reliability_diagram.png")
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Evaluate a saved model on the test/ folder of a Kaggle-layout dataset.")
    add_model_argument(parser)
    parser.add_argument("--data_dir", default=str(BUNDLED_SAMPLE), help="Kaggle-layout folder; only test/ is used.")
    parser.add_argument("--output_dir", default="outputs/eval", help="Where eval_results.json and plots are written.")
    add_options(parser, InferenceOptions, ExtractionOption)
    args = parser.parse_args(argv)

    accelerator = Accelerator()
    output_dir = Path(args.output_dir)
    try:
        test = load_chest_xray(args.data_dir)["test"]
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
        results = evaluate_on_test(accelerator, args.model, test, Path(args.data_dir) / "test", output_dir,
                                   args.per_device_eval_batch_size, args.num_workers, args.extraction_engine)
    except (DatasetLayoutError, ModelNotFound) as error:
        sys.exit(f"error: {error}")
    if accelerator.is_main_process:
        write_json(results, output_dir / "eval_results.json")
        plot_confusion_matrix(results["test_confusion_matrix"], results["test_confusion_matrix_labels"],
                              output_dir / "confusion_matrix.png", f"Test set (n={results['test_samples']})")
    accelerator.print(results_table(results))
    return results


if __name__ == "__main__":
    main()
