"""`trainer.predict`: every file gets a row equal to eager single-image analysis (ONNX Runtime), and a heatmap; bad
files are reported; a hospital's archive is screened (nested PACS folders, DICOMs without a suffix, junk files,
several processes, interruptions); an output belongs to one model."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_scripts.non_xray_images import non_xray_images
from serving.upload import diagnose
from tests.app_inputs import write_dicom
from tests.conftest import REPO_ROOT, SAMPLE_DIR, cli_error, sample_images
from trainer import PneumoniaClassifier, Predictor
from trainer.predict import main as predict


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


PATIENT = {"PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "PatientID": "MRN-0042"}


def pacs_export(folder: Path) -> Path:
    """A PACS-like export: study/series/instance folders, DICOMs named by UID without a suffix (one frontal, one
    lateral, both with patient tags), a PNG and a JPEG, and files that are not images."""
    grey = [np.asarray(Image.open(p).convert("L")) for p in sample_images("test", "PNEUMONIA", 2)]
    (folder / "1.2.3" / "1.2.3.4").mkdir(parents=True)
    (folder / "1.2.3" / "1.2.3.5").mkdir(parents=True)
    write_dicom(folder / "1.2.3" / "1.2.3.4" / "1.2.3.4.1", grey[0], ViewPosition="PA", StudyInstanceUID="1.2.3",
                SeriesInstanceUID="1.2.3.4", **PATIENT)
    write_dicom(folder / "1.2.3" / "1.2.3.5" / "1.2.3.5.1", grey[1], ViewPosition="LL", StudyInstanceUID="1.2.3",
                SeriesInstanceUID="1.2.3.5", **PATIENT)
    (folder / "other").mkdir()
    Image.open(sample_images("test", "NORMAL", 1)[0]).save(folder / "other" / "scan.png")
    shutil.copy(sample_images("test", "NORMAL", 2)[1], folder / "other" / "scan.jpeg")
    (folder / "other" / "notes.txt").write_text("not an image")
    (folder / "1.2.3" / "DICOMDIR").write_bytes(os.urandom(300))  # no suffix, no DICM preamble: skipped
    return folder


def run_predict(argv: list[str]) -> tuple[list[dict], str]:
    printed = io.StringIO()
    with redirect_stdout(printed):
        predict(argv)
    output = Path(argv[argv.index("--output") + 1])
    return list(csv.DictReader(output.open(newline=""))), printed.getvalue()


def test_a_pacs_export_is_walked_with_dicoms_without_suffix_their_uids_and_views_and_no_patient_data(
        untrained_model_dir, tmp_path):
    archive = pacs_export(tmp_path / "export")
    output = tmp_path / "predictions.csv"
    rows, printed = run_predict([str(archive), "--model", str(untrained_model_dir), "--output", str(output), "--eager",
                                 "--num_workers", "0"])
    instance = archive / "1.2.3" / "1.2.3.4" / "1.2.3.4.1"
    lateral = archive / "1.2.3" / "1.2.3.5" / "1.2.3.5.1"
    assert [row["path"] for row in rows] == [str(instance), str(lateral), str(archive / "other" / "scan.jpeg"),
                                             str(archive / "other" / "scan.png")]
    assert all(row["error"] == "" and row["prediction"] in ("NORMAL", "PNEUMONIA") for row in rows)
    assert (rows[0]["study_uid"], rows[0]["series_uid"], rows[0]["view_position"], rows[0]["frontal_view"]) == (
        "1.2.3", "1.2.3.4", "PA", "True")
    assert rows[0]["instance_uid"] and rows[1]["view_position"] == "LL" and rows[1]["frontal_view"] == "False"
    assert rows[2]["study_uid"] == rows[2]["frontal_view"] == ""  # not DICOM: empty
    assert "2 files skipped as not images" in printed
    assert str(archive / "1.2.3" / "DICOMDIR") in printed and str(archive / "other" / "notes.txt") in printed
    written = output.read_text()
    assert not any(value in written for value in ("Doe", "Jane", "19700101", "MRN-0042"))
    # The Space says the lateral view is not what the model was trained on, with the CLI's decision
    predictor = Predictor(PneumoniaClassifier.from_pretrained(untrained_model_dir), engine="eager")
    prediction, text, _ = diagnose(predictor, lateral)
    assert prediction.decision == rows[1]["prediction"] and "Lateral view" in text and "LL" in text
    assert "Lateral view" not in diagnose(predictor, instance)[1] and "Doe" not in text


@pytest.mark.slow
def test_two_processes_write_the_rows_one_process_writes(untrained_model_dir, tmp_path):
    archive = pacs_export(tmp_path / "export")
    inputs = [str(archive), str(SAMPLE_DIR / "test" / "NORMAL")]
    single, _ = run_predict([*inputs, "--model", str(untrained_model_dir), "--output", str(tmp_path / "one.csv"),
                             "--num_workers", "0"])
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "-m", "trainer.predict", *inputs, "--model", str(untrained_model_dir), "--output",
                             str(tmp_path / "two.csv"), "--num_workers", "1"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    two = list(csv.DictReader((tmp_path / "two.csv").open(newline="")))
    assert [row["path"] for row in two] == [row["path"] for row in single] and len(single) == 44
    for row, expected in zip(two, single):
        assert row["prediction"] == expected["prediction"] and row["view_position"] == expected["view_position"]
        assert float(row["PNEUMONIA"]) == pytest.approx(float(expected["PNEUMONIA"]), abs=1e-5)
    assert result.stdout.count("wrote 44 predictions") == 1 and "2 files skipped as not images" in result.stdout
    assert not list(tmp_path.glob(".two.csv.part*"))  # merged, then removed


@pytest.mark.slow
def test_an_interrupted_run_completes_on_rerun_with_every_row_once_and_the_first_rows_unchanged(untrained_model_dir,
                                                                                               tmp_path):
    archive = tmp_path / "archive"
    for copy in range(2):  # 202 images: long enough to be interrupted part-way
        shutil.copytree(SAMPLE_DIR / "test", archive / f"ward{copy}")
    output = tmp_path / "predictions.csv"
    command = [str(archive), "--model", str(untrained_model_dir), "--output", str(output), "--eager",
               "--batch_size", "2", "--num_workers", "0"]
    process = subprocess.Popen([sys.executable, "-m", "trainer.predict", *command], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / ".predictions.csv.part0"
    deadline = time.monotonic() + 300
    while not (part.is_file() and part.read_text().count("\n") >= 11) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # a real signal, as a batch scheduler sends it
    assert process.wait(timeout=60) == -signal.SIGTERM
    before = {row["path"]: row for row in csv.DictReader(io.StringIO(part.read_text()[: part.read_text().rfind("\n") + 1]))}
    assert 10 <= len(before) < 202 and not output.exists()

    rows, printed = run_predict(command)  # the same command again
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == 202 and "wrote 202 predictions" in printed
    assert paths == [str(p) for ward in sorted(archive.iterdir()) for c in ("NORMAL", "PNEUMONIA")
                     for p in sorted((ward / c).iterdir())]
    assert all(row == before[row["path"]] for row in rows if row["path"] in before)  # kept exactly as written
    assert not part.exists()
