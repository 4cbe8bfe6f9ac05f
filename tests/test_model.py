"""The model: frozen backbone, trainable head, save/reload, class weights, optimizer and scheduler."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from serving.images import read_image
from tests.conftest import sample_images
from trainer import PneumoniaClassifier
from trainer.config import TrainingConfig
from trainer.data import train_transform
from trainer.model import model_for_training
from trainer.train import build_optimizer, build_scheduler, class_weighted_loss, is_better, validate


@pytest.fixture
def model():
    torch.manual_seed(0)
    return model_for_training("resnet18", pretrained=False, head_hidden_dim=16, dropout=0.5)


def real_batch(model, count=4):
    images = sample_images("train", "NORMAL", count // 2) + sample_images("train", "PNEUMONIA", count // 2)
    transform = train_transform(model.preprocessing, rotation_degrees=10)
    pixel_values = torch.stack([transform(read_image(p, model.input_size)) for p in images])
    return pixel_values, torch.tensor([0] * (count // 2) + [1] * (count // 2))


def test_training_step_moves_only_the_head(model):
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert any("running_mean" in k for k in backbone_before)  # BatchNorm statistics are part of the check
    optimizer = build_optimizer(model, TrainingConfig(learning_rate=0.01))
    pixel_values, labels = real_batch(model)
    model.train()
    torch.nn.functional.cross_entropy(model(pixel_values), labels).backward()
    optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert all(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())


def test_only_head_parameters_reach_the_optimizer(model):
    optimizer = build_optimizer(model, TrainingConfig())
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_head_has_the_mission_architecture(model):
    layers = [type(layer).__name__ for layer in model.head]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear"]
    assert model.head[0].in_features == model.backbone.num_features == 512
    assert model.head[0].out_features == 16 and model.head[2].p == 0.5 and model.head[3].out_features == 2


def test_saved_model_reloads_with_identical_predictions(model, tmp_path):
    with torch.no_grad():
        model.head[3].bias.copy_(torch.tensor([0.3, -0.2]))  # make the head differ from a fresh one
    image = sample_images("test", "PNEUMONIA", 1)[0]
    before = model.eval().predict(image)  # a fresh model is in training mode; predicting never switches it
    model.save_pretrained(tmp_path / "saved")
    reloaded = PneumoniaClassifier.from_pretrained(tmp_path / "saved")
    assert reloaded.predict(image) == before
    assert set(before) == {"NORMAL", "PNEUMONIA"} and sum(before.values()) == pytest.approx(1.0)
    assert reloaded.preprocessing == model.preprocessing


def test_class_weights_are_inverse_training_frequencies():
    labels = [0] * 25 + [1] * 75
    weights = class_weighted_loss(labels).weight
    assert torch.allclose(weights, torch.tensor([100 / (2 * 25), 100 / (2 * 75)]))


def test_scheduler_lowers_lr_only_when_the_validation_metric_stalls(model):
    for metric, scores in (("loss", [0.60, 0.50, 0.40, 0.40, 0.45]), ("accuracy", [0.60, 0.70, 0.80, 0.80, 0.75])):
        optimizer = build_optimizer(model, TrainingConfig(learning_rate=1.0))
        scheduler = build_scheduler(optimizer, TrainingConfig(metric_for_best_model=metric, lr_patience=0, lr_factor=0.5))
        learning_rates = []
        for score in scores:
            scheduler.step(score)
            learning_rates.append(optimizer.param_groups[0]["lr"])
        assert learning_rates == [1.0, 1.0, 1.0, 0.5, 0.25], metric  # falling loss / rising accuracy keep the lr


def test_a_head_that_calls_everything_pneumonia_is_not_the_best_epoch(model):
    """On a 74%-PNEUMONIA validation split a constant PNEUMONIA head scores 0.74 accuracy but only 0.5 balanced
    accuracy: plain accuracy would keep it over a head that has learnt something; loss and balanced accuracy do not."""
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.tensor([-100.0, 100.0]))
    labels = torch.tensor([0] * 26 + [1] * 74)
    batches = [{"features": torch.randn(100, model.backbone.num_features), "labels": labels}]
    constant_head = validate(model, batches, class_weighted_loss(labels.tolist()), Accelerator())
    assert constant_head["accuracy"] == pytest.approx(0.74) and constant_head["balanced_accuracy"] == pytest.approx(0.5)
    learning_head = {"accuracy": 0.70, "balanced_accuracy": 0.72, "loss": 0.5}
    assert constant_head["loss"] > 10  # confidently wrong on every NORMAL image
    assert is_better(learning_head, constant_head, "loss")
    assert is_better(learning_head, constant_head, "balanced_accuracy")
    assert not is_better(learning_head, constant_head, "accuracy")


def test_pretrained_loading_fails_fast_and_names_the_fix(monkeypatch):
    """With the Hub unreachable (a closed loopback port), the error comes at once, naming --no_pretrained."""
    import time

    from huggingface_hub import constants

    from trainer.model import PretrainedWeightsUnavailable

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable, match="--no_pretrained"):
        model_for_training("resnet18", pretrained=True, head_hidden_dim=8, dropout=0.0)
    assert time.perf_counter() - started < 15


def saved_backbone(model_name: str, path: Path) -> dict:
    """A random-init timm model's full state_dict (classifier included, as ImageNet releases are) saved to `path`."""
    import timm
    from safetensors.torch import save_file

    state_dict = timm.create_model(model_name).state_dict()
    if path.suffix == ".safetensors":
        save_file(state_dict, path)
    else:
        torch.save({"state_dict": state_dict}, path)
    return state_dict


@pytest.mark.parametrize("file_name", ["resnet18.safetensors", "resnet18.pth", "hf_download/model.safetensors"])
def test_pretrained_weights_from_a_local_file_load_bit_exactly(tmp_path, file_name):
    from trainer.model import weights_file

    path = tmp_path / file_name
    path.parent.mkdir(exist_ok=True)
    reference = saved_backbone("resnet18", path)
    if path.parent.name == "hf_download":  # the layout `hf download timm/resnet18.a1_in1k` writes
        (path.parent / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
        path = path.parent
    loaded = model_for_training("resnet18", True, 8, 0.0, weights_file(path, "resnet18")).backbone.state_dict()
    assert loaded.keys() == {key for key in reference if not key.startswith("fc.") and "num_batches" not in key}
    assert all(torch.equal(loaded[key], reference[key]) for key in loaded)


def test_pretrained_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    from trainer.model import PretrainedWeightsUnavailable, weights_file

    saved_backbone("resnet34", tmp_path / "resnet34.bin")
    with pytest.raises(PretrainedWeightsUnavailable, match=r"80 unexpected keys \['layer1.2.bn1.bias'"):
        model_for_training("resnet18", True, 8, 0.0, weights_file(tmp_path / "resnet34.bin", "resnet18"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    with pytest.raises(PretrainedWeightsUnavailable, match="weights for 'resnet50', not 'resnet18'"):
        weights_file(tmp_path / "folder", "resnet18")
    with pytest.raises(PretrainedWeightsUnavailable, match="no such file or folder"):
        weights_file(tmp_path / "missing.safetensors", "resnet18")


def test_hub_check_goes_through_the_proxy(monkeypatch):
    """The availability check uses the Hub client's session, so HTTPS_PROXY / HTTP_PROXY apply: with the endpoint
    a name that does not resolve, only the proxy (a recording server on loopback) can answer."""
    import http.server
    import threading

    from huggingface_hub import close_session, constants

    from trainer.model import hub_reachable

    requested = []

    class RecordingProxy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            requested.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        close_session()  # the client reads proxy settings when it is created
        assert hub_reachable()
        assert requested == ["http://hub.invalid/"]
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that is down: unreachable, quickly
        close_session()
        assert not hub_reachable()
    finally:
        close_session()
        proxy.shutdown()
