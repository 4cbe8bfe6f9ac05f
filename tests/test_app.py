"""The Gradio app over HTTP with gradio_client: real X-rays, DICOM, not-an-X-ray images and bad uploads."""

import csv
import os
import runpy
import zipfile

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from dataset_scripts.non_xray_images import non_xray_images
from serving import PneumoniaClassifier, Predictor
from serving.heatmap import grad_cam, overlay
from serving.upload import diagnose, radiograph
from tests.app_inputs import bad_uploads, dicom_variants
from tests.conftest import REPO_ROOT, cli_error, confidences, sample_images


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def assert_serves_a_real_xray(client, served_model):
    image = sample_images("test", "NORMAL", 1)[0]
    label, _, comparison, overlay_png = client.predict(handle_file(str(image)), api_name="/predict")
    assert confidences(label) == pytest.approx(served_model.predict(image), abs=1e-6)
    assert len(comparison) == 2 and overlay_png is not None


def test_predictions_equal_the_package_predict_and_the_heading_is_the_decision(client, served_model):
    for image in sample_images("test", "NORMAL", 2) + sample_images("test", "PNEUMONIA", 2):
        label, decision, _, _ = client.predict(handle_file(str(image)), api_name="/predict")
        expected = served_model.predict(image)
        assert confidences(label) == pytest.approx(expected, abs=1e-6)
        verdict = "PNEUMONIA" if expected["PNEUMONIA"] >= served_model.threshold else "NORMAL"
        assert label["label"] == verdict and label["confidences"][0]["label"] == verdict
        assert f"Model output: {verdict}" in decision and "not for clinical use" in decision


def test_a_wide_radiograph_is_shown_and_overlaid_at_its_own_aspect_ratio(client, tmp_path):
    wide = tmp_path / "wide.png"
    Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L").resize((1500, 1000)).save(wide)
    _, _, (plain, overlaid), overlay_png = client.predict(handle_file(str(wide)), api_name="/predict")
    with Image.open(plain) as radiograph, Image.open(overlaid) as overlay_shown, Image.open(overlay_png) as png:
        assert radiograph.size == overlay_shown.size == png.size == (1024, 683)  # within 1024 px, 3:2 kept
        assert png.format == "PNG" and radiograph.format == overlay_shown.format == "WEBP"  # lossy only for display
        assert not np.array_equal(np.asarray(radiograph.convert("RGB")), np.asarray(overlay_shown))
        # the displayed overlay is the PNG download without visible loss
        assert psnr(np.asarray(overlay_shown.convert("RGB")), np.asarray(png)) > 40


def psnr(shown: np.ndarray, exact: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of a lossy copy (above ~40 dB no difference is visible)."""
    return float(10 * np.log10(255**2 / np.mean((shown.astype(float) - exact.astype(float)) ** 2)))


def test_the_overlay_opacity_blends_the_map_over_the_radiograph(client):
    image = handle_file(str(sample_images("test", "NORMAL", 1)[0]))
    overlays = {opacity: np.asarray(Image.open(client.predict(image, opacity, api_name="/predict")[3]), dtype=float)
                for opacity in (0.0, 0.4, 1.0)}
    shown = np.asarray(radiograph(image["path"]).convert("RGB"), dtype=float)  # the radiograph as the app draws it
    assert np.abs(overlays[0.0] - 255 * shown / shown.max()).max() <= 1  # opacity 0: the radiograph
    assert np.abs(overlays[1.0] - overlays[0.0]).mean() > np.abs(overlays[0.4] - overlays[0.0]).mean() > 5


def test_heatmap_explains_the_decision_at_the_threshold_not_the_argmax(served_run):
    model = PneumoniaClassifier.from_pretrained(served_run / "best")  # own copy: its threshold is changed
    path = sample_images("test", "PNEUMONIA", 1)[0]
    pneumonia = model.predict(path)["PNEUMONIA"]
    argmax = int(pneumonia >= 0.5)
    # A threshold on the far side of the probability makes the decision the other class than the argmax
    model.set_operating_point(float(model.temperature), (pneumonia + 1) / 2 if argmax else pneumonia / 2)
    predictor = Predictor(model, engine="eager")
    prediction, decision, radiograph = diagnose(predictor, path)
    _, _, feature_map = predictor.forward(model.transform(predictor.read(path)).unsqueeze(0))

    def overlay_of(class_index):
        return np.asarray(overlay(radiograph, grad_cam(model, feature_map, [class_index])[0]))

    assert f"Model output: {model.labels[1 - argmax]}" in decision
    shown = np.asarray(prediction.overlay(radiograph))
    assert np.array_equal(shown, overlay_of(1 - argmax))
    assert not np.array_equal(shown, overlay_of(argmax))


@pytest.mark.parametrize("variant", ["mono2_8bit", "mono2_16bit", "mono1_8bit", "mono1_12bit", "mono2_12bit_window"])
def test_dicom_gives_the_answer_of_its_source_image(client, served_model, tmp_path, variant):
    source = sample_images("test", "PNEUMONIA", 1)[0]
    label, _, (shown, _), _ = client.predict(handle_file(str(dicom_variants(tmp_path)[variant])), api_name="/predict")
    expected = served_model.predict(Image.open(source).convert("L"))
    # 12-bit windows round grey levels by up to 1; the served model's temperature (about 0.05) magnifies that
    # 20x in probability (measured up to 2.1e-3). The pixels themselves are checked in test_serving.py.
    assert confidences(label) == pytest.approx(expected, abs=5e-3)
    # The radiograph the visitor sees is the DICOM as rendered (window, MONOCHROME1 inverted): the source's greys, as
    # a lossy WebP without visible loss (the rendering itself is exact: test_serving.py)
    source_grey = np.asarray(Image.open(source).convert("L"))
    with Image.open(shown) as displayed:
        assert displayed.format == "WEBP" and psnr(np.asarray(displayed.convert("L")), source_grey) > 40


@pytest.mark.parametrize("name", ["skimage_astronaut", "skimage_page", "blank_white", "noise_uniform_colour"])
def test_a_non_xray_gets_no_diagnosis(client, tmp_path, name):
    path = tmp_path / f"{name}.png"
    non_xray_images()[name].save(path)
    label, decision, comparison, overlay_png = client.predict(handle_file(str(path)), api_name="/predict")
    assert "does not look like a chest X-ray" in decision
    assert comparison is None and overlay_png is None and (label is None or not label.get("confidences"))


@pytest.mark.parametrize("case", ["no upload", "zero-byte file", "text renamed .png", "PDF renamed .png",
                                  "truncated JPEG", "DICOM without pixel data", "30,000 x 30,000 PNG", "10 x 10 image"])
def test_bad_upload_gets_a_readable_error_and_the_app_keeps_serving(client, served_model, tmp_path, case):
    path, phrase = bad_uploads(tmp_path)[case]
    with pytest.raises(AppError, match=phrase):
        client.predict(handle_file(str(path)) if path else None, api_name="/predict")
    assert_serves_a_real_xray(client, served_model)


def test_uploads_over_the_size_cap_are_refused(client, served_model, tmp_path):
    oversized = tmp_path / "huge.png"
    oversized.write_bytes(os.urandom(26 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)file size|too large|413|exceeds"):
        client.predict(handle_file(str(oversized)), api_name="/predict")
    assert_serves_a_real_xray(client, served_model)


def test_app_without_a_model_exits_with_instructions(tmp_path, monkeypatch):
    """app.py as `python app.py` runs it, in this process (cli_error: the one-line exit Python prints, no traceback)."""
    monkeypatch.setenv("MODEL_ID", str(tmp_path / "no-model-here"))
    message = cli_error(lambda argv: runpy.run_path(str(REPO_ROOT / "app.py"), run_name="__main__"), [])
    assert "No model could be loaded" in message and "python -m trainer" in message


def test_screening_files_and_a_zip_gives_a_row_per_image_with_the_columns_of_trainer_predict(client, served_model, tmp_path):
    normal, pneumonia = sample_images("test", "NORMAL", 1)[0], sample_images("test", "PNEUMONIA", 2)
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(normal.read_bytes()[:300])
    archive = tmp_path / "studies.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in pneumonia:
            zipped.write(path, f"ward/{path.name}")
        zipped.writestr("ward/README.txt", "not an image: skipped, as trainer.predict skips it in a folder")
    table, csv_file = client.predict([handle_file(str(p)) for p in (normal, corrupt, archive)], api_name="/screen")

    with open(csv_file, newline="") as file:
        rows = list(csv.DictReader(file))
    assert table["headers"] == list(rows[0]) == ["path", "prediction", *served_model.labels, "looks_like_chest_xray",
                                                 "guard_distance", "error", "study_uid", "series_uid", "instance_uid",
                                                 "view_position", "frontal_view"]
    assert [row["path"] for row in rows] == [normal.name, corrupt.name] + [f"studies.zip/ward/{p.name}" for p in pneumonia]
    assert [row[0] for row in table["data"]] == [row["path"] for row in rows]
    assert "damaged or incomplete" in rows[1]["error"] and rows[1]["prediction"] == ""
    for row, image in zip(rows[:1] + rows[2:], [normal, *pneumonia]):
        expected = served_model.predict(image)
        assert float(row["PNEUMONIA"]) == pytest.approx(expected["PNEUMONIA"], abs=1e-5)
        assert row["prediction"] == ("PNEUMONIA" if expected["PNEUMONIA"] >= served_model.threshold else "NORMAL")
        assert row["error"] == "" and row["looks_like_chest_xray"] == "True"


def test_screening_a_broken_zip_or_nothing_is_a_readable_error(client, served_model, tmp_path):
    not_a_zip = tmp_path / "studies.zip"
    not_a_zip.write_text("this is not a zip archive")
    with pytest.raises(AppError, match="studies.zip is not a readable .zip archive"):
        client.predict([handle_file(str(not_a_zip))], api_name="/screen")
    with pytest.raises(AppError, match="No images to screen"):
        client.predict([], api_name="/screen")
    assert_serves_a_real_xray(client, served_model)
