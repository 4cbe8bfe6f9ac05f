"""Resumable training: a real SIGTERM mid-run, then --resume_from_checkpoint, equals an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST_TRAINING, REPO_ROOT, cli_error
from trainer.__main__ import cli as trainer
from trainer.train import main

# The 60-image sample (conftest.py tiny_sample); small batches make the 40 epochs long enough (~4 s in all) for the
# signal to land mid-run.
RUN = [*FAST_TRAINING, "--num_train_epochs", "40", "--per_device_train_batch_size", "2", "--cache_views", "2",
       "--checkpoint_total_limit", "2"]


@pytest.fixture
def run(tiny_sample) -> list[str]:
    return [*RUN, "--data_dir", str(tiny_sample)]


def comparable(output_dir):
    results = json.loads((output_dir / "all_results.json").read_text())
    results.pop("train_runtime_seconds")
    return results


def stop_after_epoch_3(process: subprocess.Popen, log: Path) -> None:
    """A real SIGTERM, as a batch scheduler sends it, once the run's log shows its third epoch."""
    deadline = time.monotonic() + 300
    while "epoch 3:" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_saves_a_state_that_resumes_to_the_uninterrupted_result(tmp_path, run):
    """The interrupted run is a new Python; the uninterrupted one trains in this process meanwhile (they share the
    feature cache, whose files are written whole, then renamed)."""
    log = tmp_path / "interrupted.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "trainer", *run, "--output_dir", str(tmp_path / "resumed")],
                                   cwd=REPO_ROOT, stdout=log_file, stderr=log_file,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    interrupter = threading.Thread(target=stop_after_epoch_3, args=(process, log))
    interrupter.start()
    main([*run, "--output_dir", str(tmp_path / "straight")])
    assert len(list((tmp_path / "straight" / "checkpoints").iterdir())) == 2  # --checkpoint_total_limit
    interrupter.join()
    assert process.wait(timeout=120) == 1, log.read_text()[-2000:]
    assert "Stopped by a signal" in log.read_text() and "--resume_from_checkpoint latest" in log.read_text()
    assert not (tmp_path / "resumed" / "all_results.json").exists()

    main([*run, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest"])
    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "straight")
    straight = load_file(tmp_path / "straight" / "best" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "best" / "model.safetensors")
    assert all((straight[key] == resumed[key]).all() for key in straight)
    history = json.loads((tmp_path / "resumed" / "training_history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 41))


@pytest.mark.slow
def test_a_moved_and_renamed_checkpoint_resumes_to_the_same_result(tmp_path, run):
    main([*run, "--num_train_epochs", "6", "--output_dir", str(tmp_path / "straight")])
    moved = tmp_path / "backups" / "after epoch five"
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "checkpoint_4", moved)
    main([*run, "--num_train_epochs", "6", "--output_dir", str(tmp_path / "elsewhere"), "--resume_from_checkpoint",
          str(moved)])
    assert comparable(tmp_path / "elsewhere") == comparable(tmp_path / "straight")
    straight = load_file(tmp_path / "straight" / "best" / "model.safetensors")
    elsewhere = load_file(tmp_path / "elsewhere" / "best" / "model.safetensors")
    assert all((straight[key] == elsewhere[key]).all() for key in straight)  # also when epoch 6 was not the best
    assert [p.name for p in (tmp_path / "elsewhere" / "checkpoints").iterdir()] == ["checkpoint_0"]
    with pytest.raises(ValueError, match="not a checkpoint folder written by this trainer"):
        main([*run, "--output_dir", str(tmp_path / "other"), "--resume_from_checkpoint", str(tmp_path / "backups")])


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    """Refused before any data is read (the command line's exit status and one line: tests/conftest.py cli_error)."""
    message = cli_error(trainer, [*RUN, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"])
    assert "no checkpoint under" in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def state_files(checkpoint) -> dict:
    """The weights and the optimizer's state that a resumable state holds."""
    return {"weights": load_file(checkpoint / "model.safetensors"),
            "optimizer": torch.load(checkpoint / "optimizer.bin", weights_only=True)}


@pytest.mark.slow
def test_without_the_feature_cache_resuming_restores_data_order_weights_and_optimizer_exactly(tmp_path, tiny_sample):
    """--cache_views 0 (images decoded, augmented and run through the backbone every epoch), resumed from a lean state
    at an epoch boundary: the same shuffles, head weights and Adam moments as the uninterrupted run, as README promises
    (mid-epoch, the augmentation of the batch prefetched at the interruption is drawn again). A state holds the head's
    weights only, not the frozen backbone or the guard's matrix."""
    uncached = [*FAST_TRAINING, "--data_dir", str(tiny_sample), "--cache_views", "0", "--num_train_epochs", "3",
                "--per_device_train_batch_size", "8", "--checkpoint_total_limit", "3"]
    main([*uncached, "--output_dir", str(tmp_path / "straight")])
    main([*uncached, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint",
          str(tmp_path / "straight" / "checkpoints" / "checkpoint_0")])  # after epoch 1

    straight_history = json.loads((tmp_path / "straight" / "training_history.json").read_text())["history"]
    resumed_history = json.loads((tmp_path / "resumed" / "training_history.json").read_text())["history"]
    for before, after in zip(straight_history, resumed_history):
        before.pop("seconds"), after.pop("seconds")
    assert resumed_history == straight_history  # the same batches in the same order: the same losses, epoch by epoch
    straight = state_files(tmp_path / "straight" / "checkpoints" / "checkpoint_2")
    resumed = state_files(tmp_path / "resumed" / "checkpoints" / "checkpoint_1")  # numbered on in the new folder
    assert straight["weights"].keys() == resumed["weights"].keys() == {
        "head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"}
    assert all(torch.equal(straight["weights"][key], resumed["weights"][key]) for key in straight["weights"])
    for moments, resumed_moments in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(moments[key], resumed_moments[key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "straight")
    sizes = [sum(f.stat().st_size for f in state.iterdir()) for state in (tmp_path / "straight" / "checkpoints").iterdir()]
    assert len(sizes) == 3 and max(sizes) < 5 * 2**20, sizes  # was ~71 MB with the backbone and the guard's matrix
