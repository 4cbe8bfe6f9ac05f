"""Calibration scores for the training images, each from a model that did not see that image (cross-fitting).

With a small validation split, a few dozen validation images are all that the temperature, the decision threshold
and the not-an-X-ray guard's limit would be fitted on. Below SMALL_VALIDATION images, the training images join
them: the training images (those with un-augmented features and guard statistics, up to GUARD_FIT_IMAGES) are cut
into CROSS_FIT_FOLDS folds, stratified by label and grouped by patient; for each fold a head is trained on the
other folds' cached features (the run's recipe, for the best run's number of epochs, without the plateau schedule),
and the guard's mean and covariance are fitted on the other folds' statistics; the fold's images are then scored by
that head and measured by that guard. Each fold's models saw 4/5 of the images the final model saw, so their
scores are, if anything, a little worse than the final model's on new images: conservative for a limit or a bound.
"""

import copy

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from .feature_guard import fit_guard_distribution, guard_distances

SMALL_VALIDATION = 200  # validation images below which calibration also uses cross-fitted training images
CROSS_FIT_FOLDS = 5


def folds(labels: np.ndarray, patients: list[str], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, held-out) index arrays, stratified by label and grouped by patient."""
    splitter = StratifiedGroupKFold(n_splits=CROSS_FIT_FOLDS, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups=patients))


def fresh_head(template: nn.Module, seed: int) -> nn.Module:
    """A copy of the head, initialised anew (seeded) as a new model's head is."""
    head = copy.deepcopy(template).cpu().train()
    torch.manual_seed(seed)
    for layer in head.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return head


def train_head(head: nn.Module, views: torch.Tensor, labels: torch.Tensor, criterion: nn.Module, epochs: int,
               batch_size: int, learning_rate: float, weight_decay: float, seed: int) -> nn.Module:
    """The head trained on cached features `views` (K, N, D): one view of each image per epoch, as training does."""
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        chosen = views[torch.randint(len(views), (len(labels),), generator=generator), torch.arange(len(labels))]
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            optimizer.zero_grad()
            criterion(head(chosen[batch]), labels[batch]).backward()
            optimizer.step()
    return head.eval()


def cross_fitted_logits(template: nn.Module, views: torch.Tensor, features: torch.Tensor, labels: np.ndarray,
                        fold_indices: list, criterion: nn.Module, config, epochs: int) -> torch.Tensor:
    """(N, 2) logits of each image from a head trained without its fold. `views` (K, N, D) are the training views,
    `features` (N, D) the un-augmented ones the held-out images are scored on."""
    logits = torch.empty(len(labels), 2)
    targets = torch.from_numpy(labels).long()
    for fold, (fit, held_out) in enumerate(fold_indices):
        head = train_head(fresh_head(template, config.seed + fold), views[:, fit], targets[fit], criterion, epochs,
                          config.per_device_train_batch_size, config.learning_rate, config.weight_decay,
                          config.seed + fold)
        with torch.inference_mode():
            logits[held_out] = head(features[held_out]).float()
    return logits


def cross_fitted_distances(statistics: np.ndarray, fold_indices: list) -> np.ndarray:
    """Each image's guard distance under a mean and covariance fitted without its fold."""
    distances = np.empty(len(statistics))
    for fit, held_out in fold_indices:
        mean, precision = fit_guard_distribution(statistics[fit])
        distances[held_out] = guard_distances(statistics[held_out], mean, precision)
    return distances
