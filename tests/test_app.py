"""The Gradio app over HTTP with gradio_client: real X-rays, DICOM, not-an-X-ray images and bad uploads."""

import os
import subprocess
import sys

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from dataset_scripts.non_xray_images import non_xray_images
from serving import PneumoniaClassifier
from serving.demo import diagnose
from serving.heatmap import grad_cam, overlay
from tests.app_inputs import bad_uploads, dicom_variants
from tests.conftest import REPO_ROOT, sample_images


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def model(served_run):
    return PneumoniaClassifier.from_pretrained(served_run / "best")


def confidences(label_output: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def assert_serves_a_real_xray(client, model):
    image = sample_images("test", "NORMAL", 1)[0]
    label, _, heatmap = client.predict(handle_file(str(image)), api_name="/predict")
    assert confidences(label) == pytest.approx(model.predict(image), abs=1e-6)
    assert heatmap is not None


def test_predictions_equal_the_package_predict_and_the_heading_is_the_decision(client, model):
    for image in sample_images("test", "NORMAL", 2) + sample_images("test", "PNEUMONIA", 2):
        label, decision, heatmap = client.predict(handle_file(str(image)), api_name="/predict")
        expected = model.predict(image)
        assert confidences(label) == pytest.approx(expected, abs=1e-6)
        verdict = "PNEUMONIA" if expected["PNEUMONIA"] >= model.threshold else "NORMAL"
        assert label["label"] == verdict and label["confidences"][0]["label"] == verdict
        assert f"Model output: {verdict}" in decision and "not for clinical use" in decision
        with Image.open(heatmap) as shown:
            assert shown.size == (224, 224) and shown.mode == "RGB"


def test_heatmap_explains_the_decision_at_the_threshold_not_the_argmax(served_run):
    model = PneumoniaClassifier.from_pretrained(served_run / "best")  # own copy: its threshold is changed
    path = sample_images("test", "PNEUMONIA", 1)[0]
    pneumonia = model.predict(path)["PNEUMONIA"]
    argmax = int(pneumonia >= 0.5)
    # A threshold on the far side of the probability makes the decision the other class than the argmax
    model.set_operating_point(float(model.temperature), (pneumonia + 1) / 2 if argmax else pneumonia / 2)
    _, decision, heatmap = diagnose(model, path)
    image = model.predictor.read(path)
    _, _, feature_map = model.predictor.forward(model.transform(image).unsqueeze(0))

    def overlay_of(class_index):
        return np.asarray(overlay(image.resize(model.input_size, Image.BILINEAR), grad_cam(model, feature_map, [class_index])[0]))

    assert f"Model output: {model.labels[1 - argmax]}" in decision
    assert np.array_equal(np.asarray(heatmap), overlay_of(1 - argmax))
    assert not np.array_equal(np.asarray(heatmap), overlay_of(argmax))


@pytest.mark.parametrize("variant", ["mono2_8bit", "mono2_16bit", "mono1_8bit", "mono1_12bit", "mono2_12bit_window"])
def test_dicom_gives_the_answer_of_its_source_image(client, model, tmp_path, variant):
    source = sample_images("test", "PNEUMONIA", 1)[0]
    label, _, _ = client.predict(handle_file(str(dicom_variants(tmp_path)[variant])), api_name="/predict")
    expected = model.predict(Image.open(source).convert("L"))
    # 12-bit windows round grey levels by up to 1; the served model's temperature (about 0.05) magnifies that
    # 20x in probability (measured up to 2.1e-3). The pixels themselves are checked in test_serving.py.
    assert confidences(label) == pytest.approx(expected, abs=5e-3)


@pytest.mark.parametrize("name", ["skimage_astronaut", "skimage_page", "blank_white", "noise_uniform_colour"])
def test_a_non_xray_gets_no_diagnosis(client, tmp_path, name):
    path = tmp_path / f"{name}.png"
    non_xray_images()[name].save(path)
    label, decision, heatmap = client.predict(handle_file(str(path)), api_name="/predict")
    assert "does not look like a chest X-ray" in decision
    assert heatmap is None and (label is None or not label.get("confidences"))


@pytest.mark.parametrize("case", ["no upload", "zero-byte file", "text renamed .png", "PDF renamed .png",
                                  "truncated JPEG", "DICOM without pixel data", "30,000 x 30,000 PNG", "10 x 10 image"])
def test_bad_upload_gets_a_readable_error_and_the_app_keeps_serving(client, model, tmp_path, case):
    path, phrase = bad_uploads(tmp_path)[case]
    with pytest.raises(AppError, match=phrase):
        client.predict(handle_file(str(path)) if path else None, api_name="/predict")
    assert_serves_a_real_xray(client, model)


def test_uploads_over_the_size_cap_are_refused(client, model, tmp_path):
    oversized = tmp_path / "huge.png"
    oversized.write_bytes(os.urandom(26 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)file size|too large|413|exceeds"):
        client.predict(handle_file(str(oversized)), api_name="/predict")
    assert_serves_a_real_xray(client, model)


def test_app_without_a_model_exits_with_instructions(tmp_path):
    result = subprocess.run([sys.executable, "app.py"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MODEL_ID": str(tmp_path / "no-model-here")})
    assert result.returncode == 1
    assert "No model could be loaded" in result.stderr and "python -m trainer" in result.stderr
    assert "Traceback" not in result.stderr
