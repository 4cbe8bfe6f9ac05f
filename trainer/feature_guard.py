"""Fitting the not-an-X-ray guard (applied at serving time by serving/guard.py) when training ends.

The statistics are the spatial mean and standard deviation of every channel of the backbone's last
GUARD_STAGES stages (960 channels, 1,920 numbers for a ResNet18): early stages catch texture and
intensity (a smooth gradient, a photo), late ones content (Lee et al., 2018, use several layers for
the same reason). Their mean and shrunk (Ledoit-Wolf) covariance are fitted on up to GUARD_FIT_IMAGES
un-augmented training images (cached with the features; fitted on augmented views instead, the guard let
2 of the 35 non-X-rays through). The limit is a split-conformal quantile of calibration X-rays' Mahalanobis
distances (images the mean and covariance were not fitted on): the ceil((n+1)(1-alpha))-th smallest of n, so
that a new X-ray exchangeable with them is refused with probability at most alpha, whatever n; when that rank
exceeds n, the largest distance, and the rate stated is 1/(n+1). All three are saved in the model's weights
(buffers), so every consumer of a checkpoint applies the same guard.
"""

import math

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from serving.guard import mahalanobis

DEFAULT_FALSE_REFUSAL = 0.005  # alpha: the share of real X-rays the guard may refuse
GUARD_FIT_IMAGES = 2000


def fit_guard_distribution(statistics: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) of the X-rays' statistics (N, S): Ledoit-Wolf shrinkage, in the statistics' dtype. The
    trainer's are float32, whose pseudo-inverse leaves out the directions of least variance; a float64 fit keeps them
    and was no better (benchmarks/guard_precision.py). The model stores the precision in float64."""
    estimate = LedoitWolf().fit(statistics)
    return torch.from_numpy(estimate.location_).float(), torch.from_numpy(estimate.precision_)


def guard_distances(statistics: np.ndarray, mean: torch.Tensor, precision: torch.Tensor) -> np.ndarray:
    return mahalanobis(torch.from_numpy(statistics), mean, precision).numpy()


def conformal_limit(distances: np.ndarray, false_refusal: float) -> tuple[float, float]:
    """(limit, the false-refusal rate it guarantees): the ceil((n+1)(1-alpha))-th smallest of the n calibration
    distances, or the largest with rate 1/(n+1) when n is too small for alpha."""
    n = len(distances)
    rank = math.ceil((n + 1) * (1 - false_refusal) - 1e-9)  # the tolerance keeps e.g. 200 * 0.995 at 199
    ordered = np.sort(distances)
    return float(ordered[min(rank, n) - 1]), max(false_refusal, 1 / (n + 1))


def fit_feature_guard(train_statistics: np.ndarray, calibration_statistics: np.ndarray,
                      false_refusal: float = DEFAULT_FALSE_REFUSAL,
                      cross_fitted_distances: np.ndarray | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict, np.ndarray]:
    """The guard's {"mean", "precision", "threshold"} tensors, what its limit guarantees, and the calibration
    distances it was taken from: fitted on the training statistics, its limit conformal over the calibration images'
    distances (plus, in a small run, the training images' cross-fitted ones)."""
    mean, precision = fit_guard_distribution(train_statistics)
    distances = guard_distances(calibration_statistics, mean, precision)
    if cross_fitted_distances is not None:
        distances = np.concatenate([distances, cross_fitted_distances])
    limit, achievable = conformal_limit(distances, false_refusal)
    guarantee = {"guard_false_refusal": false_refusal, "guard_false_refusal_achievable": achievable,
                 "guard_calibration_images": len(distances)}
    return {"mean": mean, "precision": precision, "threshold": torch.tensor(limit)}, guarantee, distances
