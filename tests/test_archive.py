"""Screening a hospital's archive with `trainer.predict`: nested PACS folders, DICOMs without a suffix, junk files,
several processes, interruptions; and the Inference Endpoint handler pushed with every model."""

import base64
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
from huggingface_hub import snapshot_download
from PIL import Image

from serving import PneumoniaClassifier, Predictor
from serving.upload import diagnose
from tests.app_inputs import non_xray_files, write_dicom
from tests.conftest import REPO_ROOT, SAMPLE_DIR, sample_images, start_clean_python
from tests.hub_server import TOKEN
from trainer.predict import main as predict

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


@pytest.mark.slow
def test_the_pushed_endpoint_handler_answers_as_trainer_predict_without_the_project(pushed_served_model,
                                                                                    served_predictor, tmp_path):
    snapshot = snapshot_download(pushed_served_model, token=TOKEN, local_dir=tmp_path / "repo")
    xrays = sample_images("test", "NORMAL", 2) + sample_images("test", "PNEUMONIA", 2)
    dicom = write_dicom(tmp_path / "xray_as_dicom", np.asarray(Image.open(xrays[3]).convert("L")).astype(np.uint16) * 16,
                        "MONOCHROME2", bits_stored=12)
    photo = non_xray_files(tmp_path / "others")["photograph"]
    requests = {"decoded": [str(p) for p in xrays], "base64": [base64.b64encode(p.read_bytes()).decode()
                                                                for p in [*xrays, dicom, photo]],
                "garbage": base64.b64encode(b"this is not an image").decode()}
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    code = ("import json, sys\n"
            "try:\n    import serving\n    sys.exit('serving is importable: not a clean process')\n"
            "except ImportError:\n    pass\n"
            f"sys.path.insert(0, {snapshot!r})\n"
            "from PIL import Image\n"
            "from handler import EndpointHandler\n"
            f"handler, requests = EndpointHandler({snapshot!r}), json.loads(open('requests.json').read())\n"
            "answers = [handler({'inputs': Image.open(path)}) for path in requests['decoded']]\n"
            "answers += [handler({'inputs': text}) for text in requests['base64']]\n"
            "try:\n    handler({'inputs': requests['garbage']})\nexcept ValueError as error:\n    answers.append(str(error))\n"
            "answers.append(handler({'inputs': requests['base64'][3], 'parameters': {'heatmap': True}}))\n"
            "print(json.dumps(answers))\n")
    handler_answers = start_clean_python(code, tmp_path)
    expected = [served_predictor.analyse(p) for p in [*xrays, *xrays, dicom]]
    expected_map = served_predictor.analyse(xrays[3], heatmap=True).heatmap
    answers = handler_answers()
    for answer, prediction in zip(answers[:9], expected):
        assert answer[0]["label"] == prediction.decision and answer[0]["looks_like_chest_xray"] is True
        assert answer[0]["threshold"] == pytest.approx(0.8)
        by_label = {entry["label"]: entry["probability"] for entry in answer}
        assert by_label == pytest.approx(prediction.probabilities, abs=1e-4)
    assert answers[9][0]["label"] == "NOT_A_CHEST_XRAY" and answers[9][0]["looks_like_chest_xray"] is False
    assert "not an image this endpoint can read" in answers[10]
    # Grad-CAM of the decision, as the project's app computes it
    assert "heatmap" not in answers[3][0] and answers[11][0]["label"] == expected[3].decision
    np.testing.assert_allclose(answers[11][0]["heatmap"], expected_map, rtol=1e-3, atol=1e-3 * expected_map.max())
