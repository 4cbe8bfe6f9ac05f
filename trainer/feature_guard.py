"""Fitting the not-an-X-ray guard (applied at serving time by serving/guard.py) when training ends.

The statistics are the spatial mean and standard deviation of every channel of the backbone's last
GUARD_STAGES stages (960 channels, 1,920 numbers for a ResNet18): early stages catch texture and
intensity (a smooth gradient, a photo), late ones content (Lee et al., 2018, use several layers for
the same reason). Fitted when training ends: their mean and shrunk (Ledoit-Wolf) covariance over up
to GUARD_FIT_IMAGES un-augmented training images (cached with the features; fitted on augmented views
instead, the guard let 2 of the 35 non-X-rays through); the threshold is a high quantile of the
*validation* images' Mahalanobis distances, so about (1 - quantile) of real X-rays are refused. All
three are saved in the model's weights (buffers), so every consumer of a checkpoint applies the same guard.
"""

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from serving.guard import mahalanobis

DEFAULT_QUANTILE = 0.995
GUARD_FIT_IMAGES = 2000


def fit_feature_guard(train_statistics: np.ndarray, val_statistics: np.ndarray,
                      quantile: float = DEFAULT_QUANTILE) -> dict[str, torch.Tensor]:
    """Return {"mean", "precision", "threshold"} tensors from training and validation statistics."""
    estimate = LedoitWolf().fit(train_statistics)
    mean = torch.from_numpy(estimate.location_).float()
    precision = torch.from_numpy(estimate.precision_)  # float64, see mahalanobis
    distances = mahalanobis(torch.from_numpy(val_statistics), mean, precision).numpy()
    return {"mean": mean, "precision": precision, "threshold": torch.tensor(float(np.quantile(distances, quantile)))}
