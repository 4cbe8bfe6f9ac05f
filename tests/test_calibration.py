"""Operating point, calibration and uncertainty: chosen on validation, reported on test."""

import numpy as np
import pytest
import torch

from trainer.calibration import (
    brier_score,
    check_threshold_strategy,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
)
from trainer.report import bootstrap_intervals


def synthetic_logits(temperature: float, n: int = 4000, seed: int = 0):
    """Labels drawn from calibrated probabilities, then logits sharpened by `temperature`."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = torch.tensor(np.stack([np.zeros(n), true_logit * temperature], axis=1))
    return logits, torch.tensor(labels)


def test_temperature_scaling_recovers_an_overconfidence_factor():
    logits, labels = synthetic_logits(temperature=3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("temperature", [0.1, 0.2])
def test_temperature_scaling_recovers_an_underconfidence_factor(temperature):
    """A weak head's logits are too small (best T < 1). L-BFGS with a fixed step returned NaN at T = 0.2 (which
    crashed a finished training run) and 0.0013 at T = 0.1; the line search finds both."""
    logits, labels = synthetic_logits(temperature=temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.1)


def test_temperature_scaling_lowers_ece_and_brier_of_an_overconfident_model():
    logits, labels = synthetic_logits(temperature=4.0)
    temperature = fit_temperature(logits, labels)
    before = logits.softmax(-1)[:, 1].numpy()
    after = (logits / temperature).softmax(-1)[:, 1].numpy()
    y = labels.numpy()
    assert expected_calibration_error(y, after) < expected_calibration_error(y, before) / 2
    assert brier_score(y, after) < brier_score(y, before)


def test_sensitivity_strategy_reaches_the_target_with_the_most_specific_threshold():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    threshold = choose_threshold(labels, scores, "sensitivity:0.95")
    assert (scores[labels == 1] >= threshold).mean() >= 0.95
    higher = np.sort(scores)[np.searchsorted(np.sort(scores), threshold, side="right")]
    assert (scores[labels == 1] >= higher).mean() < 0.95  # any higher threshold misses the target


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.9])
    threshold = choose_threshold(labels, scores, "youden")
    assert threshold in (0.8, 0.6, 0.5)
    youden = ((scores >= threshold)[labels == 1].mean() + (scores < threshold)[labels == 0].mean()) - 1
    assert youden == pytest.approx(2 / 3)
    assert choose_threshold(labels, scores, "fixed:0.3") == 0.3


@pytest.mark.parametrize("bad", ["median", "sensitivity:high", "fixed:2", "youden:1"])
def test_unknown_threshold_strategies_are_refused(bad):
    with pytest.raises(ValueError, match="--threshold_strategy"):
        check_threshold_strategy(bad)


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.4 + rng.random(300) * 0.6, 0, 1)
    first = bootstrap_intervals(labels, scores, 0.5, resamples=1000, seed=3)
    assert first == bootstrap_intervals(labels, scores, 0.5, resamples=1000, seed=3)
    assert set(first) == {"accuracy", "sensitivity", "specificity", "f1", "roc_auc"}
    accuracy = ((scores >= 0.5) == labels).mean()
    low, high = first["accuracy"]
    assert low < accuracy < high and high - low < 0.2


def test_bootstrap_metrics_of_all_resamples_at_once_equal_sklearn_per_resample():
    """The vectorised bootstrap computes, for every resample, what sklearn's confusion_matrix and roc_auc_score give
    (ties in the scores included: the ROC-AUC is the rank statistic with averaged ranks)."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from trainer.report import batched_screening_metrics, stratified_resamples

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 120)
    scores = np.round(np.clip(labels * 0.3 + rng.random(120) * 0.7, 0, 1), 2)  # rounded: many ties
    index = np.stack(list(stratified_resamples(labels, 50, seed=1)))
    batched = batched_screening_metrics(labels[index], (scores[index] >= 0.5).astype(int), scores[index])
    for row, resample in enumerate(index):
        y, s = labels[resample], scores[resample]
        (tn, fp), (fn, tp) = confusion_matrix(y, (s >= 0.5).astype(int), labels=[0, 1])
        assert batched["accuracy"][row] == pytest.approx((tp + tn) / len(y), abs=1e-12)
        assert batched["sensitivity"][row] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert batched["specificity"][row] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert batched["f1"][row] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
        assert batched["roc_auc"][row] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
