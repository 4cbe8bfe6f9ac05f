"""The not-an-X-ray guard of a model trained on the bundled sample: real X-rays pass, other images do not."""

import json

import numpy as np
import pytest

from dataset_scripts.non_xray_images import non_xray_images
from tests.conftest import SAMPLE_DIR
from trainer import PneumoniaClassifier, Predictor
from trainer.feature_guard import conformal_limit


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


@pytest.fixture(scope="module")
def small_site(tmp_path_factory):
    """A site with 20 X-rays per class (the bundled sample's first 20 of each in train/), tested on the bundled test/."""
    import shutil

    from tests.conftest import FAST_TRAINING, sample_images
    from trainer.train import main as train

    data = tmp_path_factory.mktemp("small-site") / "chest_xray"
    for class_name in ("NORMAL", "PNEUMONIA"):
        (data / "train" / class_name).mkdir(parents=True)
        for path in sample_images("train", class_name, 20):
            shutil.copy(path, data / "train" / class_name)
    shutil.copytree(SAMPLE_DIR / "test", data / "test")
    output_dir = data.parent / "run"
    results = train([*FAST_TRAINING, "--data_dir", str(data), "--num_train_epochs", "5", "--output_dir", str(output_dir),
                     "--threshold_strategy", "sensitivity:0.95@0.95"])
    return output_dir, results


@pytest.mark.slow
def test_a_small_sites_guard_keeps_its_stated_false_refusal_rate(small_site, tmp_path):
    """20 X-rays per class: 4 validation images, so the 36 training images, cross-fitted, calibrate too; with n = 40
    the rate alpha = 0.005 cannot be guaranteed and 1/41 is the one stated. The bundled test X-rays refused are at
    most the binomial 99.9% quantile at that rate; the photograph and the scanned page are refused. (Not asserted:
    pydicom's CT slice, which this 40-image guard measured at 14.0 against a limit of 14.05.)"""
    from scipy.stats import binom

    from tests.app_inputs import non_xray_files

    output_dir, results = small_site
    n = results["guard_calibration_images"]
    assert results["calibration"]["validation_images"] == 4
    assert results["calibration"]["cross_fitted_training_images"] == 36
    assert n == 40 and results["guard_false_refusal"] == 0.005
    assert results["guard_false_refusal_achievable"] == pytest.approx(1 / 41)
    predictor = Predictor(PneumoniaClassifier.from_pretrained(output_dir / "best"), engine="eager")
    xrays = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))
    refused = sum(not predictor.analyse(path).looks_like_xray for path in xrays)
    assert refused <= binom.ppf(0.999, len(xrays), results["guard_false_refusal_achievable"])
    assert results["test_guard_false_refusal_rate"] == pytest.approx(refused / len(xrays), abs=1 / len(xrays))
    others = non_xray_files(tmp_path)
    for name in ("photograph", "scanned document"):
        assert not predictor.analyse(others[name]).looks_like_xray, name
    card = (output_dir / "best" / "README.md").read_text()
    assert "split-conformal quantile of 40 calibration X-rays" in card and "false-refusal rate of\n0.005" in card
    assert "0.0244" in card and "1/(n+1) is the rate stated" in card
    # sensitivity:0.95@0.95 with 20 positives cannot be bounded at 0.95: it says so, and catches every positive
    assert results["sensitivity_bound_reached"] is False and results["sensitivity_positives_needed"] == 59
    assert "at least\n59 are needed" in card or "at least 59 are needed" in card
    splits = json.loads((output_dir / "splits.json").read_text())
    assert splits["calibration"]["cross_fitted_training_images"] == 36
    # the calibration distances, kept: the saved limit is read off them, as another alpha's would be
    distances = splits["calibration"]["guard_distances"]
    assert len(distances) == n and distances == sorted(distances)
    assert conformal_limit(np.array(distances), 0.005)[0] == pytest.approx(float(predictor.model.guard_threshold),
                                                                           abs=1e-3)
