"""ONNX Runtime inference gives eager PyTorch's outputs and guard verdicts, and never serves stale weights."""

import pytest
import torch

from dataset_scripts.non_xray_images import non_xray_images
from serving import PneumoniaClassifier, Predictor, read_image
from tests.conftest import sample_images


@pytest.fixture(scope="module")
def models(trained_run):
    """Predictors of the trained model: eager PyTorch (the reference) and ONNX Runtime."""
    eager = Predictor(PneumoniaClassifier.from_pretrained(trained_run[0] / "best"), engine="eager")
    served = Predictor(PneumoniaClassifier.from_pretrained(trained_run[0] / "best"), engine="onnxruntime")
    assert eager.engine == "eager" and served.engine == "onnxruntime"
    return eager, served


def real_images():
    return [read_image(p) for p in sample_images("test", "NORMAL", 3) + sample_images("test", "PNEUMONIA", 3)]


def test_single_images_get_eager_probabilities_and_guard_verdicts(models):
    eager, served = models
    images = real_images() + [non_xray_images()[name] for name in ("skimage_astronaut", "blank_white")]
    for image in images:
        expected, prediction = eager.analyse(image), served.analyse(image)
        difference = max(abs(prediction.probabilities[k] - expected.probabilities[k]) for k in expected.probabilities)
        assert difference <= 1e-5  # the bound docs/hub.md states
        assert prediction.guard_distance == pytest.approx(expected.guard_distance, rel=1e-4)
        assert prediction.looks_like_xray == expected.looks_like_xray and prediction.decision == expected.decision
    assert not served.analyse(images[-2]).looks_like_xray  # the photo is refused by the served guard too


def test_batches_of_any_size_match_eager_outputs(models):
    eager, served = models
    pixels = torch.stack([eager.model.transform(image) for image in real_images()])
    for size in (1, 2, 6):
        expected_logits, expected_statistics, expected_maps = eager.forward(pixels[:size])
        logits, statistics, feature_maps = served.forward(pixels[:size])
        assert logits.shape == expected_logits.shape and feature_maps.shape == expected_maps.shape == (size, 512, 7, 7)
        torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(feature_maps, expected_maps, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(served.guard_distances(statistics),
                                   eager.guard_distances(expected_statistics), atol=0, rtol=1e-4)


def test_changed_weights_are_never_served_from_the_stale_export_nor_in_training_mode(trained_run):
    model = PneumoniaClassifier.from_pretrained(trained_run[0] / "best")
    predictor = Predictor(model)
    pixels = model.transform(real_images()[0]).unsqueeze(0)
    exported_logits, _, _ = predictor.forward(pixels)
    model.train()
    with pytest.raises(ValueError, match="training mode"):  # dropout would make answers random: refused, not changed
        predictor.analyse(real_images()[0])
    with torch.no_grad():
        model.head[-1].bias.add_(torch.tensor([5.0, -5.0]))  # weights change after the export
    model.eval()
    logits, _, _ = predictor.forward(pixels)
    torch.testing.assert_close(logits, model(pixels))
    assert not torch.allclose(logits, exported_logits)
    with pytest.raises(ValueError, match="training mode"):
        Predictor(model.train())


def test_a_backbone_that_cannot_be_exported_falls_back_to_eager(trained_run, monkeypatch, caplog):
    # Mocked: every timm backbone tried here exports, so the exporter's failure is simulated.
    def failing_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    monkeypatch.setenv("PNEUMONIA_ONNX_CACHE", "")  # the session's export of this model is not read: exported anew
    predictor = Predictor(PneumoniaClassifier.from_pretrained(trained_run[0] / "best"))
    assert predictor.engine == "eager"
    assert "unsupported operator" in caplog.text and "eager PyTorch" in caplog.text
    assert sum(predictor.analyse(sample_images("test", "NORMAL", 1)[0]).probabilities.values()) == pytest.approx(1.0)
