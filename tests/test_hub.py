"""Push to and load from a Hub: the real huggingface_hub client against tests/hub_server.py on loopback."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, SpaceCard, hf_hub_download, snapshot_download

from serving.upload import example_files
from tests.conftest import FAST_TRAINING, REPO_ROOT, SAMPLE_DIR, cli_error, sample_images
from tests.hub_server import OTHER_TOKEN, TIMM_TOKEN, TOKEN, USER
from trainer import PneumoniaClassifier
from trainer.push import PushError, push_run
from trainer.push import main as push
from trainer.push_space import push_space

MODEL_ID = f"{USER}/pneumonia-detector"
EXPECTED_FILES = {"model.safetensors", "config.json", "modeling_pneumonia.py", "all_results.json",
                  "confusion_matrix.png", "roc_curve.png", "pr_curve.png", "reliability_diagram.png",
                  "training_curves.png", "README.md", "splits.json", "training_history.json", "training_config.json",
                  "onnx/model.onnx", "onnx/config.json"}  # private mode's files


@pytest.fixture(scope="module")
def pushed(hub, trained_run):
    output_dir, _ = trained_run
    commit = push_run(output_dir, MODEL_ID, token=TOKEN)
    return output_dir, commit


def real_xrays():
    return sample_images("test", "NORMAL", 2) + sample_images("test", "PNEUMONIA", 2)


def folder_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_snapshot_download_lists_every_pushed_file(pushed):
    output_dir, commit = pushed
    local = snapshot_download(MODEL_ID, revision=commit.oid)
    files = {str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file()}
    assert EXPECTED_FILES <= files
    with open(f"{local}/model.safetensors", "rb") as pulled:
        assert pulled.read() == (output_dir / "best" / "model.safetensors").read_bytes()
    # best/ keeps the card the Hub has: a copy of best/ (or `hf upload` of it) carries the pushed card
    assert (output_dir / "best" / "README.md").read_text() == Path(local, "README.md").read_text()


def test_large_files_come_from_the_storage_host_the_hub_redirects_to(pushed, hub):
    """As on huggingface.co: `resolve/` answers a weights file with a 302 to another origin, whose answer carries the
    CORS header web pages need; the client followed it (the bytes above are the pushed ones)."""
    import httpx

    url = f"{constants_endpoint()}/{MODEL_ID}/resolve/main/model.safetensors"
    redirect = httpx.head(url, follow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["x-linked-size"] == str(
        (pushed[0] / "best" / "model.safetensors").stat().st_size)
    location = redirect.headers["location"]
    assert location.startswith(f"http://127.0.0.1:{hub.storage.server_port}/lfs/")
    stored = httpx.get(location)
    assert stored.headers["access-control-allow-origin"] == "*"
    assert stored.content == (pushed[0] / "best" / "model.safetensors").read_bytes()
    assert httpx.head(f"{constants_endpoint()}/{MODEL_ID}/resolve/main/config.json").status_code == 200  # small: direct


def constants_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def test_model_card_passes_hub_metadata_checks_and_says_what_it_is(pushed):
    card = ModelCard.load(MODEL_ID)
    card.validate()  # the server's validate-yaml: valid YAML, model-index shape
    data = card.data
    assert data.license == "cc-by-4.0" and data.pipeline_tag == "image-classification"
    metrics = {result.metric_type: result.metric_value for result in data.eval_results}
    results = json.loads((pushed[0] / "all_results.json").read_text())
    assert metrics["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-4)
    assert set(metrics) == {"accuracy", "roc_auc", "recall", "specificity", "f1"}
    assert all(result.dataset_split == "test" for result in data.eval_results)
    text = card.text
    for phrase in ("Research demo, not for clinical use", "grouped by patient", "no ImageNet weights",
                   "single hospital", "confusion_matrix.png", "roc_curve.png", "reliability_diagram.png",
                   "chosen without the test set", "stratified bootstrap", "trust_remote_code=True",
                   "PneumoniaClassifier.from_pretrained", "doi:10.17632/rscbjbr9sj.2"):
        assert phrase in text, phrase
    threshold = f"{results['decision_threshold']:.3f}"
    assert f"PNEUMONIA when the calibrated P(PNEUMONIA) is at least\n{threshold}" in text
    assert "threshold of 0.5" not in text and f"logit({threshold})" in text


def test_model_loads_from_the_hub_with_the_project(pushed):
    output_dir, _ = pushed
    local = PneumoniaClassifier.from_pretrained(output_dir / "best")
    remote = PneumoniaClassifier.from_pretrained(MODEL_ID)
    for image in real_xrays():
        assert remote.predict(image) == local.predict(image)


def test_second_push_makes_a_new_commit(pushed):
    output_dir, first = pushed
    second = push_run(output_dir, MODEL_ID, token=TOKEN, commit_message="Push again")
    assert second.oid != first.oid
    titles = [c.title for c in HfApi().list_repo_commits(MODEL_ID)]
    assert titles[0] == "Push again" and titles.count("Upload Pneumonia Detector model") >= 1


def test_push_without_a_valid_token_is_refused_clearly(pushed):
    output_dir, _ = pushed
    with pytest.raises(PushError, match="401") as error:
        push_run(output_dir, MODEL_ID, token="hf_wrong")
    assert "retry with: python -m trainer.push" in str(error.value)


def test_a_push_to_someone_elses_repo_is_refused_in_one_line_and_keeps_the_run(pushed):
    """A token that does not own the repo: the Hub's 403, in one line with the way out; the run and the repo as they
    were."""
    output_dir, _ = pushed
    before, head = folder_digest(output_dir), HfApi().model_info(MODEL_ID).sha
    message = cli_error(push, [str(output_dir), "--hub_model_id", MODEL_ID, "--hub_token", OTHER_TOKEN])
    assert "\n" not in message and "403" in message
    assert f"may not write to {MODEL_ID}" in message and "under your own name" in message
    assert f"retry with: python -m trainer.push {output_dir}" in message
    assert folder_digest(output_dir) == before and HfApi().model_info(MODEL_ID).sha == head


def test_a_space_push_to_someone_elses_space_is_refused_in_one_line(hub):
    space_id = f"{USER}/pneumonia-demo-403"
    push_space(space_id, MODEL_ID, token=TOKEN, static=True)
    with pytest.raises(PushError) as refused:
        push_space(space_id, MODEL_ID, token=OTHER_TOKEN, static=True)
    message = str(refused.value)
    assert "\n" not in message and "403" in message and f"may not write to {space_id}" in message


def test_a_dataset_push_to_someone_elses_namespace_is_refused_in_one_line(hub, tiny_sample, capsys):
    from dataset_scripts.push_dataset import main as push_dataset

    assert push_dataset([str(tiny_sample), "--repo_id", f"{USER}/not-theirs", "--hub_token", OTHER_TOKEN]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "403" in error and f"may not write to {USER}/not-theirs" in error
    assert "--hub_token" in error


def test_push_to_an_unreachable_hub_fails_clearly_and_keeps_the_run(trained_run, monkeypatch):
    from huggingface_hub import constants

    output_dir, _ = trained_run
    before = folder_digest(output_dir)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # what HF_ENDPOINT sets: a closed port
    message = cli_error(push, [str(output_dir), "--hub_model_id", MODEL_ID, "--hub_token", TOKEN])
    assert "failed" in message and f"retry with: python -m trainer.push {output_dir}" in message
    assert folder_digest(output_dir) == before


@pytest.mark.slow
def test_failed_push_at_the_end_of_training_keeps_the_run(tmp_path):
    """The README's command as a user runs it (a new Python), ending in a push to a Hub that is down: the run is kept,
    the error says how to retry, and the log says nothing else is wrong: one line per epoch, no warning (three epochs:
    an old resumable state is removed), no download bar for the local data."""
    result = subprocess.run([sys.executable, "-m", "trainer", *FAST_TRAINING, "--num_train_epochs", "3",
                             "--output_dir", str(tmp_path), "--push_to_hub",
                             "--hub_model_id", f"{USER}/never", "--hub_token", TOKEN],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert f"retry with: python -m trainer.push {tmp_path}" in result.stderr
    # The log is one line per epoch: Accelerate's checkpoint messages only with --log_level debug
    assert "epoch 3: train_loss" in result.stderr and "accelerate.checkpointing" not in result.stderr
    assert "WARNING" not in result.stderr and "Downloading" not in result.stderr, result.stderr[-3000:]
    for name in ("all_results.json", "confusion_matrix.png", "best/model.safetensors", "best/config.json"):
        assert (tmp_path / name).is_file(), name


def test_space_push_uploads_the_app_with_gradio_front_matter(hub):
    space_id = f"{USER}/pneumonia-demo"
    push_space(space_id, MODEL_ID, token=TOKEN)
    api = HfApi(token=TOKEN)
    files = set(api.list_repo_files(space_id, repo_type="space"))
    assert {"app.py", "requirements.txt", "README.md", "serving/__init__.py", "serving/model.py",
            "serving/predictor.py", "serving/hub_files/modeling_pneumonia.py"} <= files
    assert not any(f.startswith("trainer/") for f in files)  # serving only: no training code, no feature cache
    requirements = Path(hf_hub_download(space_id, "requirements.txt", repo_type="space", token=TOKEN)).read_text()
    required = {re.split(r"[\[<>=~ ]", line)[0] for line in requirements.splitlines() if line and line[0].isalpha()}
    assert {"gradio", "torch", "timm", "pydicom", "onnxruntime"} <= required
    assert not required & {"accelerate", "datasets", "evaluate", "scikit-learn", "transformers"}
    assert sum(f.startswith("sample_data/chest_xray/test/") for f in files) == len(example_files()) == 8
    card = SpaceCard.load(space_id, repo_type="space")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.sdk_version == gradio.__version__
    assert card.data.models == [MODEL_ID] and card.data.license == "cc-by-4.0"
    assert card.data.get("emoji") and card.data.get("title") and card.data.get("short_description")
    assert "not for clinical use" in card.text
    assert api.get_space_variables(space_id)["MODEL_ID"].value == MODEL_ID


def test_the_tests_hub_answers_with_hf_hub_offline_set_in_the_shell(tmp_path):
    """The README recommends HF_HUB_OFFLINE=1 offline; the tests' own Hub is on loopback and must still answer. A new
    Python with HF_HUB_OFFLINE=1 in its environment loads the tests' configuration (tests/conftest.py), starts the
    test Hub and creates, uploads to and lists a repo through the real client."""
    code = ("import threading\n"
            "from tests.conftest import HUB_PORT\n"
            "from huggingface_hub import HfApi\n"
            "from tests.hub_server import TOKEN, USER, make_server\n"
            "server = make_server(HUB_PORT)\n"
            "threading.Thread(target=server.serve_forever, daemon=True).start()\n"
            "api = HfApi(token=TOKEN)\n"
            "repo = api.create_repo(f'{USER}/offline-shell').repo_id\n"
            "api.upload_file(path_or_fileobj=b'hello', path_in_repo='hello.txt', repo_id=repo)\n"
            "print(api.list_repo_files(repo))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hello.txt" in result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_readme_command_trains_on_imagenet_weights_from_the_hub_and_names_them(hub, tmp_path):
    """The default (pretrained) path as every user with internet takes it: timm's `timm/resnet18.a1_in1k` repo (random
    weights in timm's own file layout, made here) downloaded through HF_ENDPOINT by the README's command without
    --no_pretrained; the trained backbone is those weights, and the card names repo, revision and sha256."""
    import timm
    from safetensors.torch import load_file

    repo_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    assert repo_id == "timm/resnet18.a1_in1k"
    weights = tmp_path / "timm-weights"
    timm.models.save_for_hf(timm.create_model("resnet18"), str(weights), safe_serialization=True)
    api = HfApi(token=TIMM_TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    revision = api.upload_folder(folder_path=weights, repo_id=repo_id).oid
    output_dir = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "-m", "trainer", "--data_dir", str(SAMPLE_DIR),
               "--output_dir", str(output_dir), "--num_train_epochs", "1",
               *[option for option in FAST_TRAINING if option != "--no_pretrained"]]
    # a Hub cache of its own: the session's other tests expect no ImageNet weights in theirs
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub-cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    published = load_file(weights / "model.safetensors")
    trained = PneumoniaClassifier.from_pretrained(output_dir / "best")
    assert trained.imagenet_weights
    for name, tensor in trained.backbone.state_dict().items():
        assert torch.equal(tensor, published[name]), name  # the backbone is exactly the downloaded weights
    recorded = json.loads((output_dir / "training_config.json").read_text())
    sha = hashlib.sha256((weights / "model.safetensors").read_bytes()).hexdigest()
    assert recorded["pretrained_weights_hub"] == f"{repo_id}@{revision}" and recorded["pretrained_weights_sha256"] == sha
    card = (output_dir / "best" / "README.md").read_text()
    assert f"`{repo_id}` at revision `{revision}`" in card and f"sha256 `{sha}`" in card
    assert "base_model: timm/resnet18.a1_in1k" in card
