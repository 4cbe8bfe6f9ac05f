"""The model: frozen backbone, trainable head, save/reload, class weights, optimizer and scheduler."""

import pytest
import torch
from accelerate import Accelerator

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
    pixel_values = torch.stack([transform(model.predictor.read(p)) for p in images])
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
    before = model.predict(image)
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
