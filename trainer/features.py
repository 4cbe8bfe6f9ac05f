"""Backbone features computed once and reused: the frozen backbone is a fixed function of its input.

Validation images get one un-augmented feature vector; training images get `cache_views` augmented
views, drawn like the uncached path's augmentation, or one un-augmented view when K is 1 or
augmentation is off. Each epoch the head trains on one view per image. The cache is keyed by a hash
of the backbone weights, the preprocessing, the augmentation, the seed, K and the exact files (name,
size, mtime), so any change recomputes it; a later run with the same key loads it from disk and skips
extraction.
"""

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data import make_loader

logger = logging.getLogger(__name__)


@torch.inference_mode()
def gather_outputs(compute, loader, accelerator: Accelerator, description: str) -> np.ndarray:
    """`compute(pixel_values)` for every sample once, in loader order, gathered across processes."""
    chunks = []
    for batch in tqdm(loader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        with accelerator.autocast():
            outputs = compute(batch["pixel_values"].contiguous(memory_format=torch.channels_last)).float()
        chunks.append(accelerator.gather_for_metrics(outputs).cpu())
    return torch.cat(chunks).numpy()


@contextmanager
def channels_last(module: torch.nn.Module):
    """Convolutions in NHWC layout while extracting (faster with oneDNN and on tensor cores); NCHW again after."""
    module.to(memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)


def extract_features(model, loader, accelerator: Accelerator, description: str = "features") -> np.ndarray:
    """Pooled backbone features (N, D) of every sample."""
    with channels_last(accelerator.unwrap_model(model).eval()) as unwrapped:
        return gather_outputs(unwrapped.forward_features, loader, accelerator, description)


def extract_features_and_statistics(model, loader, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (N, D) and the not-an-X-ray guard's per-stage statistics (N, S), from one pass."""
    with channels_last(accelerator.unwrap_model(model).eval()) as unwrapped:
        both = gather_outputs(lambda pixels: torch.cat(unwrapped.features_and_statistics(pixels), dim=1), loader,
                              accelerator, "features and guard statistics")
    return np.split(both, [unwrapped.backbone.num_features], axis=1)


def files_fingerprint(split: datasets.Dataset) -> list:
    """Name, size and modification time of every image, in dataset order (no decoding)."""
    paths = [image["path"] for image in split.cast_column("image", datasets.Image(decode=False))["image"]]
    return [(os.path.basename(p), os.stat(p).st_size, int(os.stat(p).st_mtime)) for p in paths]


def cache_key(model, split: datasets.Dataset, views: int, transform, seed: int) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    recipe = {"architecture": type(model.backbone).__name__, "preprocessing": model.preprocessing,
              "decoding": "JPEG draft to input size", "transform": repr(transform), "views": views,
              "seed": seed, "files": files_fingerprint(split)}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def cached_features(model, split: datasets.Dataset, name: str, views: int, transform, config,
                    accelerator: Accelerator, cache_dir: Path) -> torch.Tensor:
    """(views, N, D) features of `split` under `transform`, from `cache_dir` when present, else extracted and saved."""
    path = cache_dir / f"{name}-{cache_key(model, split, views, transform, config.seed)}.safetensors"
    if path.is_file():
        logger.info("feature cache hit: %s", path)
        return load_file(path)["features"]
    model.to(accelerator.device)
    stacked = []
    for view in range(views):
        set_seed(config.seed + view)  # view k gets the same augmentation in every run
        loader = accelerator.prepare(make_loader(split, transform, config.per_device_eval_batch_size, False,
                                                 config.num_workers))
        stacked.append(torch.from_numpy(extract_features(model, loader, accelerator, f"{name} view {view}")))
    features = torch.stack(stacked)
    if accelerator.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous()}, path)
    accelerator.wait_for_everyone()
    return features


class CachedViews(Dataset):
    """Cached features of a split; `choose_views(epoch)` picks which view of each image the epoch sees."""

    def __init__(self, features: torch.Tensor, labels: list[int], seed: int):
        self.features, self.labels, self.seed = features, torch.tensor(labels), seed
        self.views = torch.zeros(len(labels), dtype=torch.long)

    def choose_views(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        self.views = torch.randint(len(self.features), (len(self.labels),), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"features": self.features[self.views[index], index], "labels": self.labels[index]}
