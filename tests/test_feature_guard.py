"""The not-an-X-ray guard of a model trained on the bundled sample: real X-rays pass, other images do not."""

import pytest

from dataset_scripts.non_xray_images import non_xray_images
from tests.conftest import SAMPLE_DIR
from trainer import PneumoniaClassifier


@pytest.fixture(scope="module")
def model(trained_run):
    return PneumoniaClassifier.from_pretrained(trained_run[0] / "best")


def test_guard_accepts_the_held_out_test_xrays(model):
    xrays = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))
    accepted = sum(model.analyse(path).looks_like_xray for path in xrays)
    assert accepted / len(xrays) >= 0.99


def test_guard_refuses_at_least_95_percent_of_non_xrays(model):
    images = non_xray_images()
    assert len(images) == 35
    refused = [name for name, image in images.items() if not model.analyse(image).looks_like_xray]
    assert len(refused) / len(images) >= 0.95, set(images) - set(refused)
