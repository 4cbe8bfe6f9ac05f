"""The feature cache: same head as the uncached path, invalidated by any change, reused across runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file

from serving.guard import GUARD_STAGES, stage_statistics
from tests.conftest import FAST_TRAINING, REPO_ROOT, SAMPLE_DIR
from trainer.config import parse_config
from trainer.data import load_chest_xray, make_loader, split_by_patient, train_transform
from trainer.evaluation import main as evaluation
from trainer.features import CachedViews, Extractor, cache_key
from trainer.model import model_for_training
from trainer.train import feature_loaders, main

QUICK = ["--no_pretrained", "--num_train_epochs", "1", "--num_workers", "0"]


def head_weights(output_dir):
    return {k: v for k, v in load_file(output_dir / "best" / "model.safetensors").items() if k.startswith("head.")}


@pytest.fixture
def full_fp32_convolutions():
    """On a GPU, cuDNN convolutions default to TF32 (a 10-bit mantissa), and the cached channels_last extraction and
    the uncached NCHW forward run different kernels: on an H100 the two heads then differed by 1e-4. Compare the
    paths in full fp32. Not touched on a CPU: the ONNX exporter (the CPU's extraction engine) reads the legacy TF32
    flag, which raises once the new API has set one."""
    if not torch.cuda.is_available():
        yield
        return
    conv = torch.backends.cudnn.conv
    before, conv.fp32_precision = conv.fp32_precision, "ieee"
    yield
    conv.fp32_precision = before


@pytest.mark.slow
def test_cached_and_uncached_paths_train_the_same_head(tmp_path, tiny_sample, full_fp32_convolutions):
    quick = [*QUICK, "--data_dir", str(tiny_sample)]
    main([*quick, "--cache_views", "1", "--output_dir", str(tmp_path / "cached")])
    main([*quick, "--cache_views", "0", "--no_augment", "--output_dir", str(tmp_path / "uncached")])
    cached, uncached = head_weights(tmp_path / "cached"), head_weights(tmp_path / "uncached")
    assert cached.keys() == uncached.keys() and len(cached) == 4
    fresh = model_for_training("resnet18", False, 256, 0.5).head.state_dict()
    for key, value in cached.items():
        assert torch.allclose(value, uncached[key], atol=1e-5), key
        assert not torch.equal(value, fresh[key.removeprefix("head.")])  # the head did train


@pytest.mark.slow
def test_a_second_run_reuses_the_cache_without_extracting_and_trains_the_same_head(tmp_path, tiny_sample, monkeypatch):
    """The run that builds a cache and the run that reuses it train the same head. The builder here extracts its
    training views while its validation features come from an earlier run's cache: extraction reseeds torch once
    per view, which once moved the data order of such a run (Accelerate's sampler took torch's initial seed)."""
    cache = tmp_path / "cache"
    quick = [*QUICK, "--data_dir", str(tiny_sample)]
    main([*quick, "--cache_views", "1", "--cache_dir", str(cache), "--output_dir", str(tmp_path / "earlier")])
    main([*quick, "--cache_views", "2", "--cache_dir", str(cache), "--output_dir", str(tmp_path / "first")])
    files = sorted(p.name for p in cache.iterdir())
    # K=1's un-augmented view serves the guard; K=2 caches the guard's un-augmented images besides its views (the
    # backbone's ONNX export is in the export cache, shared by every run: serving/export_cache.py)
    assert [f.split("-")[0] for f in files] == ["guard", "train", "train", "validation"]

    passes = []
    extract = Extractor.__call__

    def recording(self, loader, accelerator, description):
        passes.append(description)
        return extract(self, loader, accelerator, description)

    monkeypatch.setattr("trainer.features.Extractor.__call__", recording)
    exports = []
    monkeypatch.setattr("serving.runtime.export_onnx", lambda *args: exports.append(args))
    main([*quick, "--cache_views", "2", "--cache_dir", str(cache), "--output_dir", str(tmp_path / "second")])
    # The guard's statistics came from the cache too: the only pass over images is the test set's, and its graph was
    # read from the export cache, not exported again
    assert passes == ["test"] and exports == []
    assert sorted(p.name for p in cache.iterdir()) == files
    first, second = head_weights(tmp_path / "first"), head_weights(tmp_path / "second")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def cache_training_views(data_dir, cache, *options):
    """What a training run caches before its first epoch (train.feature_loaders, as train() calls it), no training."""
    config = parse_config([*QUICK, *options, "--cache_dir", str(cache), "--output_dir", str(cache / "unused")])
    data = load_chest_xray(data_dir)
    train_split, val_split = split_by_patient(data["train"], config.val_fraction, config.seed)
    set_seed(config.seed)  # as train() seeds before creating the model: every call gets the same backbone
    model = model_for_training(config.model_name, config.pretrained, config.head_hidden_dim, config.dropout)
    feature_loaders(config, Accelerator(), model, {"train": train_split, "validation": val_split}, cache)


def test_every_cached_view_is_an_augmented_draw_and_no_augment_caches_one_view(tmp_path, tiny_sample):
    """K views are K draws of the uncached path's augmentation: an un-augmented view among them would train the
    head on a different mix of images than --cache_views 0 does. --no_augment caches one un-augmented view."""
    cache = tmp_path / "cache"
    cache_training_views(tiny_sample, cache, "--cache_views", "2")
    cache_training_views(tiny_sample, cache, "--cache_views", "2", "--no_augment")
    train_caches = {len(features): features for features in
                    (load_file(path)["features"] for path in cache.glob("train-*.safetensors"))}
    assert sorted(train_caches) == [1, 2]
    plain, augmented = train_caches[1][0], train_caches[2]
    for view in augmented:
        # Not every draw changes the pixels: an unflipped rotation under ~0.2 degrees is a no-op at 224 px
        # (nearest-neighbour), about 1% of draws, in the uncached path too.
        unchanged = torch.isclose(view, plain, atol=1e-5).all(dim=1).float().mean()
        assert unchanged < 0.05, f"{unchanged:.0%} of the images have an un-augmented view"
    assert not torch.allclose(augmented[0], augmented[1])


@pytest.fixture(scope="module")
def train_split():
    return load_chest_xray(SAMPLE_DIR)["train"]


def test_extraction_engines_give_eager_features_and_statistics_and_restore_the_layout(train_split):
    """channels_last eager and ONNX Runtime against a plain NCHW forward, on real images: features (for the head)
    and guard statistics within 1e-4 (the engine is in the cache key, so caches of the two never mix)."""
    torch.manual_seed(0)
    accelerator = Accelerator()  # the CPU here; the GPU under benchmarks/gpu_check.sh
    model = model_for_training("resnet18", False, 16, 0.0).to(accelerator.device)
    split = train_split.select(range(12))
    loader = make_loader(split, model.transform, 6, False, 0)
    def reference(pixels):  # timm's own pooled features, and the guard's statistics of the same stages
        stages = model.backbone.forward_intermediates(pixels, indices=GUARD_STAGES, intermediates_only=True)
        return model.backbone(pixels), stage_statistics(stages)

    with torch.no_grad():
        expected = [torch.cat(outputs).cpu() for outputs in zip(*(
            reference(batch["pixel_values"].to(accelerator.device)) for batch in loader))]
    assert expected[0].shape == (12, 512) and expected[1].shape == (12, 1920)
    for engine in ("eager", "onnxruntime"):
        for extracted, reference in zip(Extractor(model, engine)(accelerator.prepare(loader), accelerator, engine),
                                        expected):
            torch.testing.assert_close(torch.from_numpy(extracted), reference, atol=1e-4, rtol=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())


def test_cache_key_changes_with_backbone_engine_preprocessing_augmentation_data_and_views(train_split, sample_copy):
    torch.manual_seed(0)
    model = model_for_training("resnet18", False, 16, 0.0)
    augmented = train_transform(model.preprocessing, 10.0)
    key = cache_key(model, train_split, 3, augmented, 42, "onnxruntime")
    assert cache_key(model, train_split, 3, train_transform(model.preprocessing, 10.0), 42, "onnxruntime") == key
    assert cache_key(model, train_split, 2, augmented, 42, "onnxruntime") != key
    assert cache_key(model, train_split, 3, train_transform(model.preprocessing, 5.0), 42, "onnxruntime") != key
    assert cache_key(model, train_split, 3, model.transform, 42, "onnxruntime") != key
    assert cache_key(model, train_split, 3, augmented, 43, "onnxruntime") != key
    assert cache_key(model, train_split, 3, augmented, 42, "eager") != key
    assert cache_key(model, train_split.select(range(100)), 3, augmented, 42, "onnxruntime") != key
    model.preprocessing = {**model.preprocessing, "interpolation": "bilinear"}
    changed_preprocessing = cache_key(model, train_split, 3, augmented, 42, "onnxruntime")
    assert changed_preprocessing != key
    with torch.no_grad():
        model.backbone.conv1.weight[0, 0, 0, 0] += 1.0
    assert cache_key(model, train_split, 3, augmented, 42, "onnxruntime") != changed_preprocessing
    copied = load_chest_xray(sample_copy)["train"]
    first = next((sample_copy / "train" / "NORMAL").iterdir())
    os.utime(first, (1, 1))  # same names and sizes, but a file changed since
    original = load_chest_xray(SAMPLE_DIR)["train"]
    assert (cache_key(model, copied, 3, augmented, 42, "onnxruntime")
            != cache_key(model, original, 3, augmented, 42, "onnxruntime"))


def test_each_epoch_sees_one_view_per_image_reproducibly():
    features = torch.arange(3 * 5 * 2, dtype=torch.float32).reshape(3, 5, 2)
    views = CachedViews(features, [0, 1, 0, 1, 0], seed=7)
    views.choose_views(1)
    first = views.views.clone()
    assert first.min() >= 0 and first.max() < 3 and len(first) == 5
    assert torch.equal(views[2]["features"], features[first[2], 2])
    views.choose_views(2)
    second = views.views.clone()
    views.choose_views(1)
    assert torch.equal(views.views, first) and not torch.equal(first, second)


@pytest.mark.slow
def test_two_process_cached_run_evaluates_every_test_image_once(tmp_path):
    """A real two-process gloo run (ACCELERATE_USE_CPU + --multi_gpu starts two processes on a CPU box), checked
    against a single-process evaluation (in this process). Both run on the CPU with any GPU hidden: on a one-GPU
    machine rank 1 would otherwise look for a second GPU, and the two evaluations would differ by the GPU's kernels.
    The training views come from the session's shared cache when an earlier run filled it; the test set is always
    extracted by the two processes."""
    cpu_only = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}

    def run(*args):
        result = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=600, env=cpu_only)
        first_error = max(result.stderr.find("Traceback"), 0)  # the failing rank's own error, not the launcher's
        assert result.returncode == 0, result.stderr[first_error:first_error + 3000]
        return result.stderr

    output_dir = tmp_path / "ddp"
    log = run("accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m", "trainer", *FAST_TRAINING,
              "--num_train_epochs", "1", "--output_dir", str(output_dir))
    # The two processes split the cores instead of each taking all of them (trainer/threads.py)
    assert log.count(f"torch threads: {max(1, len(os.sched_getaffinity(0)) // 2)}\n") == 2
    distributed = json.loads((output_dir / "all_results.json").read_text())
    assert distributed["test_samples"] == 101 and sum(map(sum, distributed["test_confusion_matrix"])) == 101
    evaluation(["--model", str(output_dir / "best"), "--output_dir", str(tmp_path / "single"), "--num_workers", "0"])
    single = json.loads((tmp_path / "single" / "eval_results.json").read_text())
    assert single["test_confusion_matrix"] == distributed["test_confusion_matrix"]
    for key in ("test_accuracy", "test_roc_auc", "test_sensitivity", "test_specificity"):
        assert single[key] == pytest.approx(distributed[key], abs=1e-6), key
