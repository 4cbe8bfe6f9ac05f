"""Operating point, calibration and uncertainty: chosen on validation, reported on test."""

import numpy as np
import pytest
import torch

from trainer.calibration import (
    bounded_sensitivity_threshold,
    brier_score,
    check_threshold_strategy,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    sensitivity_lower_bound,
)
from trainer.feature_guard import conformal_limit
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


def brute_force_bounded_threshold(labels, scores, target, confidence):
    """Every distinct score tried as the threshold, the bound from scipy's exact binomial test (one-sided): the
    highest threshold whose bound reaches `target`, or None."""
    from scipy.stats import binomtest

    positives = scores[labels == 1]
    reaching = []
    for threshold in np.unique(scores):
        caught = int((positives >= threshold).sum())
        if caught and binomtest(caught, len(positives), alternative="greater").proportion_ci(
                confidence_level=confidence, method="exact").low >= target:
            reaching.append(threshold)
    return max(reaching) if reaching else None


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("positives, target, confidence", [(200, 0.9, 0.95), (250, 0.95, 0.95), (60, 0.9, 0.8),
                                                             (30, 0.95, 0.95)])
def test_the_bounded_sensitivity_threshold_is_the_brute_force_one(seed, positives, target, confidence):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(positives, int), np.zeros(150, int)]
    scores = np.round(np.r_[rng.beta(5, 2, positives), rng.beta(2, 5, 150)], 3)  # rounded: ties too
    threshold, bound = bounded_sensitivity_threshold(labels, scores, target, confidence)
    expected = brute_force_bounded_threshold(labels, scores, target, confidence)
    assert bound.reached == (expected is not None) and bound.positives == positives
    assert bound.positives_needed == min(n for n in range(1, 1000)
                                         if sensitivity_lower_bound(n, n, confidence) >= target)
    if expected is not None:
        assert threshold == expected and bound.lower_bound >= target
        assert choose_threshold(labels, scores, f"sensitivity:{target}@{confidence}") == expected
    else:  # too few positives (30 < 59): every one caught, the highest bound there is, and the sentence says so
        assert threshold == scores[labels == 1].min() and bound.lower_bound < target
        assert bound.lower_bound == pytest.approx((1 - confidence) ** (1 / positives))
        assert f"at least {bound.positives_needed} are needed" in bound.sentence()


@pytest.mark.parametrize("good", ["sensitivity:0.95@0.95", "sensitivity:0.9@0.99"])
def test_bounded_sensitivity_strategies_are_accepted(good):
    check_threshold_strategy(good)


@pytest.mark.parametrize("n, alpha", [(10, 0.1), (40, 0.005), (199, 0.005), (1000, 0.005), (523, 0.05)])
def test_the_conformal_limit_is_the_finite_sample_quantile(n, alpha):
    distances = np.random.default_rng(n).gamma(5, size=n)
    limit, achievable = conformal_limit(distances, alpha)
    # the smallest distance that at least (n+1)(1-alpha) of the n + 1 (a new image counted too) do not exceed
    needed = (n + 1) * (1 - alpha)
    candidates = [d for d in np.sort(distances) if (distances <= d).sum() >= needed - 1e-9]
    assert limit == (candidates[0] if candidates else distances.max())
    assert achievable == pytest.approx(max(alpha, 1 / (n + 1)))


def test_the_conformal_limit_refuses_at_most_alpha_of_exchangeable_new_images():
    """Monte Carlo: n calibration distances and one new one from the same distribution, many times."""
    rng = np.random.default_rng(0)
    for n, alpha in ((40, 0.005), (300, 0.02)):
        draws = rng.lognormal(size=(20000, n + 1))
        refused = [draw[-1] > conformal_limit(draw[:-1], alpha)[0] for draw in draws]
        achievable = max(alpha, 1 / (n + 1))
        assert np.mean(refused) <= achievable + 3 * np.sqrt(achievable / len(draws))
