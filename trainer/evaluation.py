"""Test-set evaluation: the project's evaluate metric, a confusion-matrix plot and a printed table."""

import json
from pathlib import Path

import evaluate
import matplotlib
import numpy as np
import torch
from accelerate import Accelerator
from sklearn.metrics import ConfusionMatrixDisplay
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "pneumonia_metrics.py"


def load_metric() -> evaluate.EvaluationModule:
    """The project's metric module, loaded by path (works offline)."""
    return evaluate.load(str(METRIC_PATH))


@torch.inference_mode()
def predict_loader(model, dataloader, accelerator: Accelerator, description: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Return (labels, PNEUMONIA probabilities) for every sample once, gathered across processes."""
    model.eval()
    all_labels, all_scores = [], []
    for batch in tqdm(dataloader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        probabilities = model(batch["pixel_values"]).float().softmax(dim=-1)[:, 1]
        labels, probabilities = accelerator.gather_for_metrics((batch["labels"], probabilities))
        all_labels.append(labels.cpu())
        all_scores.append(probabilities.cpu())
    return torch.cat(all_labels).numpy(), torch.cat(all_scores).numpy()


def compute_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Screening metrics at a PNEUMONIA-probability threshold."""
    predictions = (scores >= threshold).astype(np.int64)
    return load_metric().compute(predictions=predictions, references=labels, scores=scores)


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(ax=axes, cmap="Blues", colorbar=False)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
