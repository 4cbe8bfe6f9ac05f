"""Not-an-X-ray guard, applied at serving time: how far an image's backbone activations lie from the
training X-rays'. The statistics are the spatial mean and standard deviation of every channel of the
backbone's last GUARD_STAGES stages; the mean, precision and threshold they are compared with are
fitted when training ends (trainer/feature_guard.py) and saved in the model's buffers.
"""

import torch

GUARD_STAGES = 4


def stage_statistics(stages: list[torch.Tensor]) -> torch.Tensor:
    """(N, 2 * channels): per-channel spatial mean and standard deviation of each stage's activations."""
    return torch.cat([s.mean(dim=(2, 3)) for s in stages] + [s.std(dim=(2, 3)) for s in stages], dim=1)


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Distance of each row of `features` (N, D) from the fitted distribution, in float64.

    The precision matrix is badly conditioned (near-constant statistics), so float32 loses the distance.
    """
    centred = features.double() - mean.double()
    return torch.einsum("nd,de,ne->n", centred, precision.double(), centred).clamp_min(0).sqrt()
