"""Operating point and calibration, chosen on validation only: temperature scaling, decision threshold, ECE."""

import numpy as np
import torch
from sklearn.metrics import roc_curve

from serving.labels import POSITIVE_INDEX

# A validation set too small or a model too weak to say anything can send T to extremes; keep it sane.
TEMPERATURE_RANGE = (0.05, 20.0)
THRESHOLD_STRATEGIES = ("youden", "sensitivity:TARGET (e.g. sensitivity:0.95)", "fixed:VALUE (e.g. fixed:0.5)")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on validation (Guo et al., 2017),
    clipped to TEMPERATURE_RANGE. A line search keeps L-BFGS from diverging: with a fixed step it returned NaN
    (and so crashed the end of a finished run) on a weak head whose best T was 0.15."""
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits, labels = logits.double(), labels.long()

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_temperature.exp().double(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_temperature.detach().exp().item(), *TEMPERATURE_RANGE))


def choose_threshold(labels: np.ndarray, scores: np.ndarray, strategy: str) -> float:
    """A PNEUMONIA-probability threshold from validation labels and scores.

    youden: maximise sensitivity + specificity - 1; sensitivity:T: the highest threshold whose
    validation sensitivity is at least T (the most specific one that reaches the target); fixed:V: V.
    """
    name, _, value = strategy.partition(":")
    if name == "fixed":
        return float(value)
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores)
    thresholds = np.minimum(thresholds, 1.0)  # roc_curve's first threshold is +inf
    if name == "youden":
        return float(thresholds[np.argmax(true_positive_rate - false_positive_rate)])
    if name == "sensitivity":
        reaching = np.flatnonzero(true_positive_rate >= float(value))
        return float(thresholds[reaching[0]])
    raise ValueError(f"Unknown --threshold_strategy {strategy!r}; use one of {', '.join(THRESHOLD_STRATEGIES)}.")


def fit_operating_point(logits: torch.Tensor, labels: np.ndarray, strategy: str) -> tuple[float, float]:
    """(temperature, threshold) fitted on these logits and labels: the temperature first, then the threshold on
    the calibrated P(PNEUMONIA) by `strategy`."""
    temperature = fit_temperature(logits, torch.from_numpy(labels))
    scores = (logits / temperature).softmax(dim=-1)[:, POSITIVE_INDEX].numpy()
    return temperature, choose_threshold(labels, scores, strategy)


def check_threshold_strategy(strategy: str) -> None:
    name, _, value = strategy.partition(":")
    try:
        valid = name == "youden" and not value or name in {"sensitivity", "fixed"} and 0 <= float(value) <= 1
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"--threshold_strategy {strategy!r} is not one of {', '.join(THRESHOLD_STRATEGIES)}.")


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """ECE of the predicted class's confidence, equal-width bins."""
    predictions = (scores >= 0.5).astype(int)
    confidence = np.where(predictions == POSITIVE_INDEX, scores, 1 - scores)
    correct = predictions == labels
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def brier_score(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean((scores - labels) ** 2))
