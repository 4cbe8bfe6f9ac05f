"""The not-an-X-ray guard of a model trained on the bundled sample: real X-rays pass, other images do not."""

import pytest

from dataset_scripts.non_xray_images import non_xray_images
from tests.conftest import SAMPLE_DIR
from trainer import PneumoniaClassifier, Predictor


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor(PneumoniaClassifier.from_pretrained(trained_run[0] / "best"), engine="eager")


def test_guard_accepts_the_held_out_test_xrays(predictor):
    xrays = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))
    accepted = sum(predictor.analyse(path).looks_like_xray for path in xrays)
    assert accepted / len(xrays) >= 0.99


def test_guard_refuses_at_least_95_percent_of_non_xrays(predictor):
    images = non_xray_images()
    assert len(images) == 35
    refused = [name for name, image in images.items() if not predictor.analyse(image).looks_like_xray]
    assert len(refused) / len(images) >= 0.95, set(images) - set(refused)
