"""The command lines as a user runs them: clear errors instead of tracebacks, the dataset scripts.

Error paths run each command's `main(argv)` in this process (tests/conftest.py `cli_error`); the commands also start
in new interpreters elsewhere: `python -m trainer` in test_hub.py and test_resume.py, `trainer.predict` in
test_predict.py and test_serving.py, `accelerate launch` in test_features.py and test_threads.py.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from dataset_scripts.check_dataset import main as check_dataset
from tests.conftest import REPO_ROOT, SAMPLE_DIR, cli_error
from trainer.__main__ import cli as trainer
from trainer.evaluation import main as evaluation
from trainer.predict import main as predict


def run(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_trainer_rejects_a_broken_folder_without_a_traceback(sample_copy, tmp_path):
    emptied = sample_copy / "train" / "PNEUMONIA"
    for image in emptied.iterdir():
        image.unlink()
    message = cli_error(trainer, ["--data_dir", str(sample_copy), "--no_pretrained", "--output_dir", str(tmp_path / "out")])
    assert message.startswith(f"error: Class folder {emptied} holds no images")
    assert not (tmp_path / "out" / "best").exists()


def test_trainer_offline_with_pretrained_weights_stops_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 in the shell sets
    started = time.perf_counter()
    message = cli_error(trainer, ["--output_dir", str(tmp_path / "out")])
    # the offline branch, before any data is read or any file written
    assert "are not in the local cache and the Hub" in message and "is disabled by HF_HUB_OFFLINE" in message
    assert "--pretrained_weights" in message and "--no_pretrained" in message
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 60


def test_invalid_option_values_are_rejected_after_parsing(tmp_path):
    message = cli_error(trainer, ["--val_fraction", "0.7", "--output_dir", str(tmp_path)])
    assert "--val_fraction must be between 0 and 0.5" in message
    message = cli_error(trainer, ["--checkpoint_total_limit", "0", "--output_dir", str(tmp_path)])
    assert "--checkpoint_total_limit must be at least 1" in message


@pytest.mark.slow
def test_metric_module_loads_by_path_offline():
    """As its docstring tells users to load it, in a Python with the Hub and evaluate's downloads switched off."""
    code = ("import evaluate, json; "
            "metric = evaluate.load('trainer/metrics/pneumonia_metrics.py'); "
            "print(json.dumps(metric.compute(predictions=[0, 1, 1, 1, 0], references=[0, 0, 1, 1, 1], "
            "scores=[0.1, 0.6, 0.8, 0.9, 0.4])))")
    result = run("-c", code, env={"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["sensitivity"] == pytest.approx(2 / 3) and metrics["specificity"] == pytest.approx(1 / 2)
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]
    assert metrics["roc_auc"] == pytest.approx(5 / 6)


def test_check_dataset_reports_counts_and_patients(capsys):
    assert check_dataset([str(SAMPLE_DIR)]) == 0  # the exit status
    stdout = capsys.readouterr().out
    assert "train  NORMAL          100" in stdout and "test   PNEUMONIA        61" in stdout
    assert stdout.strip().endswith("OK")


def test_check_dataset_names_unreadable_files(sample_copy, capsys):
    broken = sample_copy / "test" / "NORMAL" / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert check_dataset([str(sample_copy)]) == 1
    output = capsys.readouterr()
    assert f"unreadable: {broken}" in output.err and "1 unreadable file(s)" in output.out


def test_kaggle_download_fails_clearly_when_offline(tmp_path):
    # The loopback proxy on a closed port stands in for "no network", wherever the test runs.
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "KAGGLEHUB_CACHE": str(tmp_path), "KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "none"}
    result = run("-m", "dataset_scripts.download_kaggle", env=offline, timeout=120)
    assert result.returncode != 0
    assert "could not download paultimothymooney/chest-xray-pneumonia" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_to_tensorboard_writes_per_epoch_metrics(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = trained_run  # trained with --report_to tensorboard, 3 epochs
    event_files = list((output_dir / "runs").rglob("events.out.tfevents.*"))
    assert event_files
    events = EventAccumulator(str(event_files[0].parent)).Reload()
    assert [e.step for e in events.Scalars("val_accuracy")] == [1, 2, 3]
    assert {"train_loss", "val_loss", "lr"} <= set(events.Tags()["scalars"])


def test_rerunning_over_resumable_states_stops_and_names_both_ways_out(trained_run, tmp_path):
    from tests.conftest import FAST_TRAINING
    from trainer.train import main

    earlier = tmp_path / "earlier"
    shutil.copytree(trained_run[0], earlier)
    states = sorted(p.name for p in (earlier / "checkpoints").iterdir())
    with pytest.raises(ValueError) as error:
        main([*FAST_TRAINING, "--num_train_epochs", "1", "--output_dir", str(earlier)])
    message = str(error.value)
    assert str(earlier / "checkpoints") in message
    assert "--resume_from_checkpoint latest" in message and "--overwrite_output_dir" in message
    assert sorted(p.name for p in (earlier / "checkpoints").iterdir()) == states  # nothing was deleted
    main([*FAST_TRAINING, "--num_train_epochs", "1", "--output_dir", str(earlier), "--overwrite_output_dir"])
    assert sorted(p.name for p in (earlier / "checkpoints").iterdir()) == ["checkpoint_0"]


@pytest.mark.parametrize("command, problem, phrase", [
    ("trainer.evaluation", "missing model", "No model could be loaded from"),
    ("trainer.evaluation", "wrong data folder", "does not exist"),
    ("trainer.predict", "missing model", "No model could be loaded from"),
    ("trainer.predict", "mistyped image path", "No such file or folder"),
])
def test_evaluation_and_predict_answer_user_errors_in_one_line(untrained_model_dir, tmp_path, monkeypatch, command,
                                                              problem, phrase):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a missing model is not looked for on the Hub
    model = str(tmp_path / "no-model") if problem == "missing model" else str(untrained_model_dir)
    data = str(tmp_path / "no-data") if problem == "wrong data folder" else str(SAMPLE_DIR)
    image = str(tmp_path / "scna.jpeg") if problem == "mistyped image path" else str(SAMPLE_DIR / "test")
    arguments = (["--model", model, "--data_dir", data, "--output_dir", str(tmp_path / "out")]
                 if command == "trainer.evaluation" else [image, "--model", model, "--output", str(tmp_path / "p.csv")])
    message = cli_error(evaluation if command == "trainer.evaluation" else predict, arguments)
    assert phrase in message.splitlines()[0] and sum(line.startswith("error: ") for line in message.splitlines()) == 1


@pytest.mark.slow
def test_training_offline_with_local_imagenet_weights_records_their_hash(tmp_path, tiny_sample, monkeypatch):
    """HF_HUB_OFFLINE=1: the real recipe runs from a local weights file; its sha256 lands in training_config.json
    and the model card, and the trained backbone is the file's. A file for another architecture: one error line."""
    import hashlib

    import torch
    from huggingface_hub import constants
    from safetensors.torch import load_file

    from tests.test_model import saved_backbone
    from trainer.model_card import build_model_card

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 in the shell sets
    weights = tmp_path / "resnet18.safetensors"
    reference = saved_backbone("resnet18", weights)
    # eager extraction: this backbone (the file's) is new to the session, and its ONNX export would take ~10 s
    common = ["--num_train_epochs", "1", "--num_workers", "0", "--cache_views", "1", "--data_dir", str(tiny_sample),
              "--extraction_engine", "eager"]
    trainer([*common, "--pretrained_weights", str(weights), "--output_dir", str(tmp_path / "out")])
    recorded = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert recorded["pretrained_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    trained = load_file(tmp_path / "out" / "best" / "model.safetensors")
    assert torch.equal(trained["backbone.layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"])
    card = str(build_model_card(tmp_path / "out", "someone/pneumonia"))
    assert f"sha256 `{recorded['pretrained_weights_sha256']}`" in card

    saved_backbone("resnet34", tmp_path / "resnet34.pth")
    message = cli_error(trainer, [*common, "--pretrained_weights", str(tmp_path / "resnet34.pth"), "--output_dir",
                                  str(tmp_path / "x")])
    assert "does not fit a resnet18 backbone: 0 missing keys; 80 unexpected keys" in message
