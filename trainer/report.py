"""Uncertainty and plots for the test evaluation: bootstrap intervals, ROC, PR, reliability, training curves."""

from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
from scipy.stats import rankdata
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

from serving.labels import POSITIVE_INDEX

from .options import SeedOption

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def screening_metrics(labels: np.ndarray, predictions: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy, sensitivity, specificity and F1 (PNEUMONIA) from one confusion matrix, and ROC-AUC."""
    return {name: float(values[0]) for name, values in batched_screening_metrics(
        labels[None], predictions[None], scores[None]).items()}


def batched_screening_metrics(labels: np.ndarray, predictions: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """`screening_metrics` of each row of (R, N) arrays at once (the bootstrap's 1,000 resamples in one pass:
    1,000 sklearn calls took ~8 s). ROC-AUC is the Mann-Whitney statistic of the scores' ranks (ties averaged),
    which is what sklearn's roc_auc_score computes; NaN for a row with one class only."""
    positive, predicted = labels == POSITIVE_INDEX, predictions == POSITIVE_INDEX
    tp, fp = (positive & predicted).sum(axis=1), (~positive & predicted).sum(axis=1)
    fn, tn = (positive & ~predicted).sum(axis=1), (~positive & ~predicted).sum(axis=1)
    positives, negatives = positive.sum(axis=1), (~positive).sum(axis=1)
    rank_sum = (rankdata(scores, axis=1) * positive).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"accuracy": (tp + tn) / labels.shape[1],
                "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
                "specificity": np.where(tn + fp > 0, tn / (tn + fp), 0.0),
                "f1": np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
                "roc_auc": (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)}


def stratified_resamples(labels: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of bootstrap resamples, each class resampled within itself (seeded)."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    for _ in range(resamples):
        yield np.concatenate([rng.choice(members, len(members)) for members in by_class])


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray, resamples: int = 1000,
                        seed: int = SeedOption.seed, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals from stratified resampling (see `stratified_resamples`); `threshold` is one value or
    one per image (cross-fitted thresholds)."""
    predictions = (scores >= np.broadcast_to(threshold, scores.shape)).astype(int)
    index = np.stack(list(stratified_resamples(labels, resamples, seed)))  # (resamples, N)
    draws = batched_screening_metrics(labels[index], predictions[index], scores[index])
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for name, v in draws.items()}


def save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(ax=axes, cmap="Blues", colorbar=False)
    axes.set_title(title)
    save(figure, path)


def plot_roc(labels, scores, threshold: float, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(labels, scores, ax=axes, name="test", plot_chance_level=True)
    predicted = scores >= threshold
    sensitivity, fpr = predicted[labels == POSITIVE_INDEX].mean(), predicted[labels != POSITIVE_INDEX].mean()
    axes.plot(fpr, sensitivity, "o", color="crimson", label=f"operating point (threshold {threshold:.3f})")
    axes.set_title("ROC curve, test set")
    axes.legend(loc="lower right")
    save(figure, path)


def plot_precision_recall(labels, scores, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(5, 5))
    PrecisionRecallDisplay.from_predictions(labels, scores, ax=axes, name="test", plot_chance_level=True)
    axes.set_title("Precision-recall curve (PNEUMONIA), test set")
    save(figure, path)


def plot_reliability(labels, scores_before, scores_after, path: Path, title: str = "Reliability diagram, test set",
                     names: tuple[str, str] = ("before temperature scaling", "after temperature scaling")) -> None:
    figure, axes = plt.subplots(figsize=(5, 5))
    CalibrationDisplay.from_predictions(labels, scores_before, n_bins=10, ax=axes, name=names[0])
    CalibrationDisplay.from_predictions(labels, scores_after, n_bins=10, ax=axes, name=names[1])
    axes.set_title(title)
    save(figure, path)


def plot_training_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    figure, (loss_axes, accuracy_axes, lr_axes) = plt.subplots(1, 3, figsize=(13, 4))
    loss_axes.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_axes.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="weighted cross-entropy")
    accuracy_axes.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    accuracy_axes.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    accuracy_axes.plot(epochs, [h["val_balanced_accuracy"] for h in history], "o--", label="validation, balanced")
    accuracy_axes.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    lr_axes.plot(epochs, [h["lr"] for h in history], "o-", color="tab:green", label="learning rate")
    lr_axes.set(title="Learning rate", xlabel="epoch", ylabel="lr", yscale="log")
    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.legend()
    save(figure, path)
