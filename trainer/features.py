"""Backbone features computed once and reused: the frozen backbone is a fixed function of its input.

Validation images get one un-augmented feature vector; training images get `cache_views` augmented
views, drawn like the uncached path's augmentation, or one un-augmented view when K is 1 or
augmentation is off. Each epoch the head trains on one view per image. The same passes also keep the
not-an-X-ray guard's statistics of each image's first view, so fitting the guard after training needs
no second pass over the images. The cache is keyed by a hash of the backbone weights, the engine, the
preprocessing, the augmentation, the seed, K and the exact files (name, size, mtime), so any change
recomputes it; a later run with the same key loads it from disk and skips extraction.

Engines (`--extraction_engine`): eager PyTorch in channels_last, or the same computation exported to
ONNX and run by ONNX Runtime (compared in benchmarks/RESULTS.md), features within 1e-6 of eager; `auto`
takes ONNX Runtime on a CPU in fp32 and eager PyTorch elsewhere (GPU, bf16).
"""

import copy
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import datasets
import numpy as np
import onnxruntime
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from serving.files import atomic_write
from serving.guard import GUARD_STAGES, stage_statistics
from serving.runtime import INPUT, onnx_bytes, onnx_session

from .data import image_cells, make_loader

logger = logging.getLogger(__name__)


@torch.inference_mode()
def gather_outputs(compute, loader, accelerator: Accelerator, description: str) -> np.ndarray:
    """`compute(pixel_values)` for every sample once, in loader order, gathered across processes."""
    chunks = []
    for batch in tqdm(loader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        with accelerator.autocast():
            outputs = compute(batch["pixel_values"].contiguous(memory_format=torch.channels_last)).float()
        chunks.append(accelerator.gather_for_metrics(outputs.to(accelerator.device)).cpu())
    return torch.cat(chunks).numpy()


@contextmanager
def channels_last(module: torch.nn.Module):
    """Convolutions in NHWC layout while extracting (the layout oneDNN and tensor cores prefer); NCHW again after."""
    module.to(memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)


class FeaturesAndStatistics(nn.Module):
    """One backbone pass: pooled features (N, D) and the guard's per-stage statistics (N, S), concatenated."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        final, stages = self.backbone.forward_intermediates(pixel_values, indices=GUARD_STAGES)
        return torch.cat([self.backbone.forward_head(final), stage_statistics(stages)], dim=1)


def backbone_digest(model) -> str:
    """sha256 of the backbone's weights: what its features depend on, besides the input."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def exported_backbone(model) -> bytes:
    """`FeaturesAndStatistics` of the model's backbone as ONNX (exported from a CPU copy when the model is elsewhere).
    The backbone is frozen, so the ~10 s export is made once and read from the export cache
    (serving/export_cache.py) by the run's later passes (the guard's, the test set's) and by later runs."""
    backbone = model.backbone if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model.backbone).cpu()
    return onnx_bytes(FeaturesAndStatistics(backbone), model.preprocessing["input_size"], ["features_and_statistics"])


def resolve_engine(requested: str, accelerator: Accelerator) -> str:
    """`auto`: ONNX Runtime for fp32 on a CPU, where it is fastest; eager PyTorch on a GPU or in mixed precision."""
    if requested != "auto":
        return requested
    on_cpu_in_fp32 = accelerator.device.type == "cpu" and accelerator.mixed_precision == "no"
    return "onnxruntime" if on_cpu_in_fp32 else "eager"


class Extractor:
    """Features and guard statistics of every sample of a loader, through the chosen engine (ONNX Runtime runs on
    the CPU with this process's torch thread count; its graph is exported at first use, or read from the export
    cache)."""

    def __init__(self, model, engine: str):
        self.model, self.engine = model, engine

    @cached_property
    def session(self) -> onnxruntime.InferenceSession:
        return onnx_session(exported_backbone(self.model), threads=torch.get_num_threads())

    def run_onnx(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(pixel_values.cpu().numpy())  # NCHW, whatever the strides said
        return torch.from_numpy(self.session.run(None, {INPUT: pixels})[0])

    def __call__(self, loader, accelerator: Accelerator, description: str) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D), statistics (N, S)) of every sample, in loader order, gathered across processes."""
        model = accelerator.unwrap_model(self.model).eval()
        if self.engine == "onnxruntime":
            self.session  # exported outside gather_outputs' inference mode
            both = gather_outputs(self.run_onnx, loader, accelerator, description)
        else:
            with channels_last(model):
                both = gather_outputs(FeaturesAndStatistics(model.backbone), loader, accelerator, description)
        return np.split(both, [model.backbone.num_features], axis=1)


def files_fingerprint(split: datasets.Dataset) -> list:
    """Per image, in dataset order (no decoding): the name, size and modification time of a local file, or the
    sha256 of bytes held in the dataset (a dataset from the Hub)."""
    fingerprints = []
    for batch in image_cells(split).chunks:
        for cell in batch.to_pylist():
            path, content = cell["path"], cell["bytes"]
            fingerprints.append(hashlib.sha256(content).hexdigest() if content is not None else
                                (os.path.basename(path), os.stat(path).st_size, int(os.stat(path).st_mtime)))
    return fingerprints


def cache_key(model, split: datasets.Dataset, views: int, transform, seed: int, engine: str) -> str:
    digest = hashlib.sha256(backbone_digest(model).encode())
    recipe = {"architecture": type(model.backbone).__name__, "preprocessing": model.preprocessing,
              "decoding": "JPEG draft to input size", "transform": repr(transform), "views": views,
              "seed": seed, "engine": engine, "files": files_fingerprint(split)}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def cached_features(split: datasets.Dataset, name: str, views: int, transform, config, accelerator: Accelerator,
                    cache_dir: Path, extractor: Extractor) -> dict[str, torch.Tensor]:
    """{"features": (views, N, D), "statistics": (N, S) of view 0} of `split` under `transform`, from `cache_dir`
    when present, else extracted and saved."""
    model = extractor.model
    key = cache_key(model, split, views, transform, config.seed, extractor.engine)
    path = cache_dir / f"{name}-{key}.safetensors"
    if path.is_file():
        logger.info("feature cache hit: %s", path)
        return load_file(path)
    model.to(accelerator.device)
    features, statistics = [], None
    for view in range(views):
        set_seed(config.seed + view)  # view k gets the same augmentation in every run
        loader = accelerator.prepare(make_loader(split, transform, config.per_device_eval_batch_size, False,
                                                 config.num_workers))
        view_features, view_statistics = extractor(loader, accelerator, f"{name} view {view}")
        features.append(torch.from_numpy(view_features))
        statistics = torch.from_numpy(view_statistics) if statistics is None else statistics
    cached = {"features": torch.stack(features), "statistics": statistics.contiguous()}
    if accelerator.is_main_process:  # written whole, then renamed: a run sharing the folder never reads half a file
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as partial:
            save_file(cached, partial)
    accelerator.wait_for_everyone()
    return cached


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
