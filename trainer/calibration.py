"""Operating point and calibration, chosen on validation only: temperature scaling, decision threshold, ECE."""

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta
from sklearn.metrics import roc_curve

from serving.labels import POSITIVE_INDEX

# A validation set too small or a model too weak to say anything can send T to extremes; keep it sane.
TEMPERATURE_RANGE = (0.05, 20.0)
THRESHOLD_STRATEGIES = ("youden", "sensitivity:TARGET (e.g. sensitivity:0.95)",
                        "sensitivity:TARGET@CONFIDENCE (e.g. sensitivity:0.95@0.95)", "fixed:VALUE (e.g. fixed:0.5)")


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


@dataclass
class SensitivityBound:
    """What `sensitivity:T@C` achieved on the calibration positives: the one-sided Clopper-Pearson lower bound of
    sensitivity at the chosen threshold, whether it reaches T, and how many positives (all caught) would let it."""

    target: float
    confidence: float
    positives: int
    reached: bool
    lower_bound: float
    positives_needed: int

    def results(self) -> dict:
        return {"sensitivity_target": self.target, "sensitivity_confidence": self.confidence,
                "sensitivity_calibration_positives": self.positives, "sensitivity_bound_reached": self.reached,
                "sensitivity_lower_bound": self.lower_bound, "sensitivity_positives_needed": self.positives_needed}

    def sentence(self) -> str:
        if self.reached:
            return (f"with {self.confidence:.0%} confidence the sensitivity is at least {self.lower_bound:.3f} (target "
                    f"{self.target}), by the Clopper-Pearson bound on {self.positives} calibration positives")
        return (f"the {self.positives} calibration positives are too few for a sensitivity of {self.target} at "
                f"{self.confidence:.0%} confidence (at least {self.positives_needed} are needed, all caught): the "
                f"threshold catches every one of them, which bounds the sensitivity at {self.lower_bound:.3f} only")


def sensitivity_lower_bound(caught: int, positives: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a proportion, `caught` of `positives`, at `confidence`."""
    return float(beta.ppf(1 - confidence, caught, positives - caught + 1)) if caught else 0.0


def positives_needed(target: float, confidence: float) -> int:
    """The fewest positives that, all caught, bound the sensitivity at `target`: (1 - C)^(1/n) >= T."""
    needed = math.ceil(math.log(1 - confidence) / math.log(target))
    return needed if sensitivity_lower_bound(needed, needed, confidence) >= target else needed + 1


def bounded_sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float,
                                  confidence: float) -> tuple[float, SensitivityBound]:
    """The most specific threshold whose Clopper-Pearson lower bound of sensitivity on the positives reaches
    `target` at `confidence`; when none does, the one that catches every positive (the highest bound reachable)."""
    positive = np.sort(scores[labels == POSITIVE_INDEX])[::-1]
    caught = np.searchsorted(-positive, -positive, side="right")  # positives at or above each one (ties included)
    bounds = np.array([sensitivity_lower_bound(k, len(positive), confidence) for k in caught])
    reaching = np.flatnonzero(bounds >= target)
    chosen = reaching[0] if len(reaching) else len(positive) - 1  # the highest threshold that reaches, or the lowest
    return float(positive[chosen]), SensitivityBound(target, confidence, len(positive), bool(len(reaching)),
                                                     float(bounds[chosen]), positives_needed(target, confidence))


def choose_threshold(labels: np.ndarray, scores: np.ndarray, strategy: str) -> float:
    """A PNEUMONIA-probability threshold from calibration labels and scores.

    youden: maximise sensitivity + specificity - 1; sensitivity:T: the highest threshold whose sensitivity is at
    least T (the most specific one that reaches the target: a point estimate); sensitivity:T@C: the highest whose
    Clopper-Pearson lower bound of sensitivity reaches T at confidence C (see `bounded_sensitivity_threshold`);
    fixed:V: V.
    """
    name, _, value = strategy.partition(":")
    if name == "fixed":
        return float(value)
    if name == "sensitivity" and "@" in value:
        target, confidence = map(float, value.split("@"))
        return bounded_sensitivity_threshold(labels, scores, target, confidence)[0]
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores)
    thresholds = np.minimum(thresholds, 1.0)  # roc_curve's first threshold is +inf
    if name == "youden":
        return float(thresholds[np.argmax(true_positive_rate - false_positive_rate)])
    if name == "sensitivity":
        reaching = np.flatnonzero(true_positive_rate >= float(value))
        return float(thresholds[reaching[0]])
    raise ValueError(f"Unknown --threshold_strategy {strategy!r}; use one of {', '.join(THRESHOLD_STRATEGIES)}.")


def sensitivity_bound(labels: np.ndarray, scores: np.ndarray, strategy: str) -> SensitivityBound | None:
    """What a `sensitivity:T@C` strategy guarantees on these calibration scores (None for other strategies)."""
    name, _, value = strategy.partition(":")
    if name != "sensitivity" or "@" not in value:
        return None
    target, confidence = map(float, value.split("@"))
    return bounded_sensitivity_threshold(labels, scores, target, confidence)[1]


def fit_operating_point(logits: torch.Tensor, labels: np.ndarray,
                        strategy: str) -> tuple[float, float, SensitivityBound | None]:
    """(temperature, threshold, what a sensitivity:T@C threshold guarantees) fitted on these logits and labels: the
    temperature first, then the threshold on the calibrated P(PNEUMONIA) by `strategy`."""
    temperature = fit_temperature(logits, torch.from_numpy(labels))
    scores = (logits / temperature).softmax(dim=-1)[:, POSITIVE_INDEX].numpy()
    return temperature, choose_threshold(labels, scores, strategy), sensitivity_bound(labels, scores, strategy)


def check_threshold_strategy(strategy: str) -> None:
    name, _, value = strategy.partition(":")
    try:
        if name == "sensitivity" and "@" in value:
            target, confidence = map(float, value.split("@"))
            valid = 0 < target < 1 and 0 < confidence < 1
        else:
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
