"""Not-an-X-ray guard: how far an image's backbone features lie from the training X-rays.

Fitted when training ends: the mean and a shrunk (Ledoit-Wolf) covariance of the training images'
pooled backbone features; the threshold is a high quantile of the *validation* images' Mahalanobis
distances, so about (1 - quantile) of real X-rays are refused. All three are saved in the model's
weights (buffers), so every consumer of a checkpoint applies the same guard.
"""

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

DEFAULT_QUANTILE = 0.995


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Distance of each row of `features` (N, D) from the fitted distribution."""
    centred = features.double() - mean.double()
    return torch.einsum("nd,de,ne->n", centred, precision.double(), centred).clamp_min(0).sqrt()


def fit_feature_guard(train_features: np.ndarray, val_features: np.ndarray,
                      quantile: float = DEFAULT_QUANTILE) -> dict[str, torch.Tensor]:
    """Return {"mean", "precision", "threshold"} tensors from training and validation features."""
    estimate = LedoitWolf().fit(train_features)
    mean = torch.from_numpy(estimate.location_).float()
    precision = torch.from_numpy(estimate.precision_).float()
    distances = mahalanobis(torch.from_numpy(val_features), mean, precision).numpy()
    return {"mean": mean, "precision": precision, "threshold": torch.tensor(float(np.quantile(distances, quantile)))}
