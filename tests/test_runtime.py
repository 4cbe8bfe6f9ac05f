"""ONNX Runtime inference gives eager PyTorch's probabilities and guard verdicts, and never serves stale weights."""

import pytest
import torch

from dataset_scripts.non_xray_images import non_xray_images
from tests.conftest import sample_images
from trainer import PneumoniaClassifier
from trainer.preprocessing import load_image


@pytest.fixture(scope="module")
def models(trained_run):
    """The trained model twice: eager PyTorch (the reference) and served by ONNX Runtime."""
    eager = PneumoniaClassifier.from_pretrained(trained_run[0] / "best")
    served = PneumoniaClassifier.from_pretrained(trained_run[0] / "best")
    assert served.use_onnxruntime()
    return eager, served


def real_images():
    return [load_image(p) for p in sample_images("test", "NORMAL", 3) + sample_images("test", "PNEUMONIA", 3)]


def test_single_images_get_eager_probabilities_and_guard_verdicts(models):
    eager, served = models
    images = real_images() + [non_xray_images()[name] for name in ("skimage_astronaut", "blank_white")]
    for image in images:
        expected, expected_distance, expected_verdict = eager.analyse(image)
        probabilities, distance, verdict = served.analyse(image)
        assert max(abs(probabilities[k] - expected[k]) for k in expected) <= 1e-4
        assert distance == pytest.approx(expected_distance, rel=1e-4) and verdict == expected_verdict
    assert not served.analyse(images[-2])[2]  # the photo is refused by the served guard too


def test_batches_of_any_size_match_eager_logits(models):
    eager, served = models
    pixels = torch.stack([eager.transform(image) for image in real_images()])
    for size in (1, 2, 6):
        expected_logits, expected_distances = eager.logits_and_guard_distances(pixels[:size])
        logits, distances = served.logits_and_guard_distances(pixels[:size])
        assert logits.shape == expected_logits.shape and distances.shape == expected_distances.shape
        torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(distances, expected_distances, atol=0, rtol=1e-4)


def test_training_drops_the_exported_copy(trained_run):
    model = PneumoniaClassifier.from_pretrained(trained_run[0] / "best")
    assert model.use_onnxruntime()
    model.train()
    with torch.no_grad():
        model.head[-1].bias.add_(torch.tensor([5.0, -5.0]))  # weights change after the export
    pixels = model.transform(real_images()[0]).unsqueeze(0)
    logits, _ = model.logits_and_guard_distances(pixels)
    torch.testing.assert_close(logits, model.eval()(pixels))


def test_a_backbone_that_cannot_be_exported_falls_back_to_eager(trained_run, monkeypatch, caplog):
    # Mocked: every timm backbone tried here exports, so the exporter's failure is simulated.
    def failing_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    model = PneumoniaClassifier.from_pretrained(trained_run[0] / "best")
    assert not model.use_onnxruntime()
    assert "unsupported operator" in caplog.text and "eager PyTorch" in caplog.text
    assert sum(model.predict(sample_images("test", "NORMAL", 1)[0]).values()) == pytest.approx(1.0)
