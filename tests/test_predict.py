"""Batch prediction CLI (ONNX Runtime): every file gets a row equal to eager single-image analysis, and a heatmap;
bad files are reported."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.non_xray_images import non_xray_images
from tests.conftest import REPO_ROOT, SAMPLE_DIR, cli_error
from trainer import PneumoniaClassifier, Predictor


def test_batch_predictions_match_predict_and_report_bad_files(trained_run, tmp_path):
    model_dir = trained_run[0] / "best"
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    photo = tmp_path / "astronaut.png"
    non_xray_images()["skimage_astronaut"].save(photo)
    output = tmp_path / "preds.csv"
    result = subprocess.run([sys.executable, "-m", "trainer.predict", str(SAMPLE_DIR / "test"), str(photo), str(broken),
                             "--model", str(model_dir), "--output", str(output), "--batch_size", "16",
                             "--num_workers", "2", "--heatmaps", str(tmp_path / "heatmaps")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 103 and "1 unreadable" in result.stdout
    assert rows[-1]["path"] == str(broken) and "not an image" in rows[-1]["error"] and rows[-1]["prediction"] == ""
    # The photo is answered NOT_A_CHEST_XRAY, without probabilities or heatmap, as the Space gives it no diagnosis
    assert rows[-2]["path"] == str(photo) and rows[-2]["looks_like_chest_xray"] == "False"
    assert rows[-2]["prediction"] == "NOT_A_CHEST_XRAY" and rows[-2]["PNEUMONIA"] == rows[-2]["heatmap"] == ""
    refused = sum(row["prediction"] == "NOT_A_CHEST_XRAY" for row in rows)
    assert f"{refused} not chest X-rays" in result.stdout
    model = PneumoniaClassifier.from_pretrained(model_dir)
    predictor = Predictor(model, engine="eager")  # the reference
    for row in rows[:101:25] + rows[-2:-1]:
        expected = predictor.analyse(row["path"])
        assert row["prediction"] == expected.decision
        assert float(row["guard_distance"]) == pytest.approx(expected.guard_distance, abs=2e-3)
        assert row["looks_like_chest_xray"] == str(expected.looks_like_xray)
        if expected.looks_like_xray:
            assert float(row["PNEUMONIA"]) == pytest.approx(expected.probabilities["PNEUMONIA"], abs=1e-5)
            assert row["prediction"] == ("PNEUMONIA" if float(row["PNEUMONIA"]) >= model.threshold else "NORMAL")
    # One Grad-CAM overlay per chest X-ray: the decision's map over the image as the model sees it
    heatmaps = sorted((tmp_path / "heatmaps").iterdir())
    accepted = [row for row in rows if row["looks_like_chest_xray"] == "True"]
    assert len(heatmaps) == len(accepted) >= 100 and [row["heatmap"] for row in accepted] == [str(p) for p in heatmaps]
    row = rows[7]
    image = predictor.read(row["path"])
    expected = predictor.analyse(image, heatmap=True).overlay(image.resize(model.input_size, Image.BILINEAR))
    with Image.open(row["heatmap"]) as written:
        assert written.size == (224, 224)
        assert np.abs(np.asarray(written, dtype=int) - np.asarray(expected, dtype=int)).max() <= 2  # ORT vs eager


def test_an_output_belongs_to_the_model_that_wrote_it(untrained_model_dir, tmp_path):
    """Screening again into the same output with another model (the same weights at another operating point, as
    recalibration makes) stops before predicting and leaves the first model's file as it was; --overwrite gives every
    row to the second model; an output without a record of its model is not resumed either."""
    from trainer.predict import main as predict
    from trainer.predict import record_file

    models = {}
    for name, threshold in (("never", 1.0), ("always", 0.0)):  # NORMAL / PNEUMONIA for every image: rows tell them apart
        model = PneumoniaClassifier.from_pretrained(untrained_model_dir)
        model.set_operating_point(1.0, threshold)
        model.save_pretrained(tmp_path / name)
        models[name] = model
    images = [str(p) for p in sorted((SAMPLE_DIR / "test" / "NORMAL").glob("*.jpeg"))[:4]]
    output = tmp_path / "predictions.csv"
    common = [*images, "--output", str(output), "--eager", "--num_workers", "0"]
    predict([*common, "--model", str(tmp_path / "never")])
    first = output.read_bytes()
    assert {row["prediction"] for row in csv.DictReader(output.open())} == {"NORMAL"}
    assert json.loads(record_file(output).read_text())["decision_threshold"] == 1.0

    message = cli_error(predict, [*common, "--model", str(tmp_path / "always")])
    assert f"{output} holds rows written by another model ({tmp_path / 'never'}" in message
    assert "--overwrite" in message and "another --output" in message
    assert output.read_bytes() == first

    predict([*common, "--model", str(tmp_path / "never")])  # the same model resumes: nothing to add
    assert output.read_bytes() == first
    predict([*common, "--model", str(tmp_path / "always"), "--overwrite"])
    rows = list(csv.DictReader(output.open()))
    expected = Predictor(models["always"], engine="eager")
    assert [row["prediction"] for row in rows] == [expected.analyse(path).decision for path in images]
    assert {row["prediction"] for row in rows} == {"PNEUMONIA"}

    record_file(output).unlink()  # as written before outputs recorded their model
    message = cli_error(predict, [*common, "--model", str(tmp_path / "always")])
    assert "a model it has no record of" in message
    output.replace(tmp_path / ".predictions.csv.part1")  # a multi-process run's part file, interrupted
    message = cli_error(predict, [*common, "--model", str(tmp_path / "always")])
    assert "a model it has no record of" in message
