"""`trainer.predict --dicomweb`: screening a real PACS (Debian's Orthanc with its DICOMweb plugin, on loopback) over
QIDO-RS and WADO-RS, and Structured Reports stored back with STOW-RS."""

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file

from tests.app_inputs import dicom_variants, grey_xray, write_dicom
from tests.conftest import REPO_ROOT, cli_error
from tests.pacs_server import DICOMWEB_PLUGIN, ORTHANC, Orthanc
from trainer.pacs import parse_headers
from trainer.predict import main as predict
from trainer.predict import record_file

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
                                                   reason="needs Orthanc: apt-get install orthanc orthanc-dicomweb")]
STUDY, OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "20220101", "PatientSex": "F"}


def in_study(path, study: str, series: str, **attributes):
    """The DICOM at `path` placed in a study and series of one patient (as a PACS holds it), saved again."""
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    for keyword, value in {**PATIENT, "StudyDate": "20261201", **attributes}.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The same instances in a folder and in Orthanc: MONOCHROME1 and 2 at 8, 12 and 16 bits, a lateral view, a CT
    slice that is not a chest X-ray, and a corrupt instance (pixel data cut short)."""
    folder = tmp_path_factory.mktemp("pacs-files")
    files = [in_study(path, STUDY, f"{STUDY}.1", ViewPosition="PA") for path in dicom_variants(folder).values()]
    lateral = write_dicom(folder / "lateral.dcm", grey_xray(), ViewPosition="LL")
    files.append(in_study(lateral, STUDY, f"{STUDY}.2", ViewPosition="LL"))
    files.append(in_study(shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm"), OTHER_STUDY,
                          f"{OTHER_STUDY}.1"))
    corrupt = write_dicom(folder / "corrupt.dcm", grey_xray())
    dataset = pydicom.dcmread(corrupt)
    dataset.PixelData = dataset.PixelData[:1000]
    dataset.save_as(corrupt)
    files.append(in_study(corrupt, OTHER_STUDY, f"{OTHER_STUDY}.2", ViewPosition="PA"))
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    DICOMwebClient(orthanc.url).store_instances([pydicom.dcmread(path) for path in files])
    yield orthanc, folder, files
    orthanc.stop()


def rows_of(path) -> list[dict]:
    return list(csv.DictReader(open(path, newline="")))


def reports(orthanc) -> list[pydicom.Dataset]:
    client = DICOMwebClient(orthanc.url)
    found = client.search_for_instances(search_filters={"Modality": "SR"})
    return [client.retrieve_instance(match["0020000D"]["Value"][0], match["0020000E"]["Value"][0],
                                     match["00080018"]["Value"][0]) for match in found]


@pytest.fixture(scope="module")
def screened(archive, served_run, tmp_path_factory):
    """The archive screened from its folder and from Orthanc (with reports stored) by the served model, whose guard
    refuses the CT slice."""
    orthanc, folder, files = archive
    work = tmp_path_factory.mktemp("screened")
    model = served_run / "best"
    predict([str(folder), "--model", str(model), "--output", str(work / "folder.csv"), "--num_workers", "0",
             "--eager"])
    predict(["--dicomweb", orthanc.url, "--modality", "CR,DX,CT", "--store_results", "--store_heatmaps", "--model",
             str(model), "--output", str(work / "pacs.csv"), "--num_workers", "0", "--eager"])
    return rows_of(work / "folder.csv"), rows_of(work / "pacs.csv"), work


def test_every_instance_gets_the_row_its_file_gets(archive, screened):
    orthanc, _, files = archive
    from_folder, from_pacs, _ = screened
    by_instance = {row["instance_uid"]: row for row in from_folder}
    assert len(from_pacs) == len(files) == 8
    uids = [(row["study_uid"], row["series_uid"], row["instance_uid"]) for row in from_pacs]
    assert uids == sorted(uids)  # study, series, SOP instance: the order every process agrees on
    for row in from_pacs:
        assert row["path"] == (f"{orthanc.url}/studies/{row['study_uid']}/series/{row['series_uid']}/instances/"
                               f"{row['instance_uid']}")  # the WADO-RS URL is the row's key
        expected = by_instance[row["instance_uid"]]
        assert (row["prediction"], row["looks_like_chest_xray"], row["view_position"], row["frontal_view"]) == (
            expected["prediction"], expected["looks_like_chest_xray"], expected["view_position"],
            expected["frontal_view"])
        for column in ("NORMAL", "PNEUMONIA", "guard_distance"):
            # the folder and the PACS batch the instances differently, and on some CPUs (AVX-512) a float32 output
            # depends on its batch's size in the last digits
            if expected[column]:
                assert float(row[column]) == pytest.approx(float(expected[column]), rel=1e-5, abs=1e-7), column
            else:  # the undecodable instance: no scores, from either source
                assert row[column] == "", column
    errors = [row for row in from_pacs if row["error"]]
    assert len(errors) == 1 and "cannot be decoded" in errors[0]["error"]  # the corrupt one; the run went on
    assert {row["view_position"] for row in from_pacs} >= {"PA", "LL"}
    assert not any(name in open(screened[2] / "pacs.csv").read() for name in ("Doe", "MRN-0042", "20220101"))


def content_items(dataset: pydicom.Dataset):
    """Every content item of a Structured Report, depth first."""
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def report_values(report: pydicom.Dataset) -> dict[str, object]:
    """{concept name: value} of a report's numeric, coded and text items (the algorithm's name and version too)."""
    values = {}
    for item in content_items(report):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            values[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            values[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType in ("TEXT", "UIDREF"):
            values.setdefault(name, item.get("TextValue") or item.get("UID"))
    return values


def values_of_ct(stored: dict, rows: list[dict]) -> dict:
    (ct,) = [row for row in rows if row["study_uid"] == OTHER_STUDY and not row["error"]]
    return report_values(stored[ct["instance_uid"]])


def test_each_screened_instance_gets_a_report_in_its_study_that_references_it(archive, screened):
    orthanc, _, _ = archive
    _, from_pacs, work = screened
    record = json.loads(record_file(work / "pacs.csv").read_text())
    stored = {}
    for report in reports(orthanc):
        hd.sr.EnhancedSR.from_dataset(report)  # highdicom reads it back as its SR document
        evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        stored[evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID] = report
    screened_rows = [row for row in from_pacs if not row["error"]]
    assert set(stored) == {row["instance_uid"] for row in screened_rows}  # one report per screened instance
    finding = {"PNEUMONIA": "Pneumonia", "NORMAL": "Normal", "NOT_A_CHEST_XRAY": "Not a chest X-ray"}
    for row in screened_rows:
        report = stored[row["instance_uid"]]
        assert report.StudyInstanceUID == row["study_uid"] and report.SeriesInstanceUID != row["series_uid"]
        assert report.PatientID == PATIENT["PatientID"]  # the source's patient module, inside the PACS only
        assert report.SeriesDescription == "Pneumonia Detector: research demo, not for clinical use"
        values = report_values(report)
        assert values["Finding"] == finding[row["prediction"]]
        assert values["Algorithm Version"] == record["weights_sha256"]  # the model's identity
        assert values["Decision threshold"] == pytest.approx(record["decision_threshold"], abs=1e-6)
        assert values["Not-an-X-ray guard distance"] == pytest.approx(float(row["guard_distance"]), abs=1e-3)
        if row["PNEUMONIA"]:
            assert values["Calibrated probability of pneumonia"] == pytest.approx(float(row["PNEUMONIA"]), abs=1e-6)
        else:
            assert row["prediction"] == "NOT_A_CHEST_XRAY"
    assert values_of_ct(stored, from_pacs)["Finding"] == "Not a chest X-ray"  # the CT slice: refused, and said so


def test_each_chest_xray_gets_its_grad_cam_overlay_as_a_secondary_capture(archive, screened):
    orthanc, _, _ = archive
    _, from_pacs, _ = screened
    client = DICOMwebClient(orthanc.url)
    captures = [client.retrieve_instance(match["0020000D"]["Value"][0], match["0020000E"]["Value"][0],
                                         match["00080018"]["Value"][0])
                for match in client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"})]
    xrays = [row for row in from_pacs if row["looks_like_chest_xray"] == "True"]
    assert len(captures) == len(xrays) > 0  # refused and unreadable instances get no heatmap
    assert {capture.StudyInstanceUID for capture in captures} <= {row["study_uid"] for row in xrays}
    for capture in captures:
        assert capture.PhotometricInterpretation == "RGB" and capture.pixel_array.shape == (224, 224, 3)
        assert capture.PatientID == PATIENT["PatientID"] and "not for clinical use" in capture.SeriesDescription
        assert capture.pixel_array.std() > 0  # a coloured map, not a blank


def test_a_rerun_stores_nothing_twice(archive, screened, served_run):
    orthanc, _, _ = archive
    _, _, work = screened
    everything = DICOMwebClient(orthanc.url).search_for_instances
    before, instances_before = len(reports(orthanc)), len(everything(get_remaining=True))
    predict(["--dicomweb", orthanc.url, "--modality", "CR,DX,CT", "--store_results", "--store_heatmaps", "--model",
             str(served_run / "best"), "--output", str(work / "again.csv"), "--num_workers", "0", "--eager"])
    assert len(reports(orthanc)) == before and len(rows_of(work / "again.csv")) == 8
    assert len(everything(get_remaining=True)) == instances_before  # no report, no overlay stored again


def test_an_unreachable_pacs_is_one_line_naming_it(untrained_model_dir, tmp_path):
    message = cli_error(predict, ["--dicomweb", "http://127.0.0.1:9/dicom-web", "--model", str(untrained_model_dir),
                                  "--output", str(tmp_path / "p.csv")])
    assert "\n" not in message and "The PACS at http://127.0.0.1:9/dicom-web cannot be reached" in message


def test_a_pacs_that_stops_mid_run_gives_one_line_and_the_rerun_completes(untrained_model_dir, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        grey = np.asarray(Image.fromarray(grey_xray()))
        DICOMwebClient(orthanc.url).store_instances([pydicom.dcmread(in_study(
            write_dicom(tmp_path / f"x{i}.dcm", grey), STUDY, f"{STUDY}.{i // 10}", ViewPosition="PA"))
            for i in range(40)])
        output = tmp_path / "p.csv"
        command = [sys.executable, "-m", "trainer.predict", "--dicomweb", orthanc.url, "--model", str(untrained_model_dir),
                   "--output", str(output), "--num_workers", "0", "--eager", "--per_device_eval_batch_size", "1"]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        part = tmp_path / ".p.csv.part0"
        deadline = time.monotonic() + 300
        while not (part.is_file() and part.read_text().count("\n") >= 6) and time.monotonic() < deadline:
            time.sleep(0.05)
        orthanc.stop()
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: The PACS at") and "cannot be reached" in last and "run the same command" in last
        kept = part.read_text().count("\n") - 1
        assert 5 <= kept < 40
        orthanc.start()
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                                env={**os.environ})
        assert result.returncode == 0, result.stderr[-3000:]
        rows = rows_of(output)
        assert len(rows) == len({row["path"] for row in rows}) == 40 and not any(row["error"] for row in rows)
    finally:
        orthanc.stop()


def test_two_processes_screen_the_pacs_as_one(archive, screened, served_run, tmp_path):
    orthanc, _, _ = archive
    _, from_pacs, _ = screened
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "-m", "trainer.predict", "--dicomweb", orthanc.url, "--modality", "CR,DX,CT", "--model",
                             str(served_run / "best"), "--output", str(tmp_path / "two.csv"), "--num_workers", "0",
                             "--eager"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    two = rows_of(tmp_path / "two.csv")
    assert [row["path"] for row in two] == [row["path"] for row in from_pacs]
    for row, expected in zip(two, from_pacs):
        assert row["prediction"] == expected["prediction"] and row["error"] == expected["error"]
        if expected["PNEUMONIA"]:
            assert float(row["PNEUMONIA"]) == pytest.approx(float(expected["PNEUMONIA"]), abs=1e-6)


def test_a_pacs_that_asks_for_credentials_and_a_model_from_the_hub(pushed_served_model, hub, tmp_path):
    """A PACS with HTTP Basic users (as deployed): without or with wrong credentials, one line naming the URL and
    --dicomweb_header, nothing written; with them, the Hub model's reports name its repo and commit."""
    from huggingface_hub import HfApi

    orthanc = Orthanc(tmp_path / "orthanc", users={"screening": "s3cret"}).start()
    try:
        good = "Authorization: Basic " + base64.b64encode(b"screening:s3cret").decode()
        files = [in_study(write_dicom(tmp_path / f"x{i}.dcm", grey_xray()), STUDY, f"{STUDY}.1", ViewPosition="PA")
                 for i in range(2)]
        DICOMwebClient(orthanc.url, headers=parse_headers([good])).store_instances(
            [pydicom.dcmread(path) for path in files])
        output = tmp_path / "p.csv"
        command = ["--dicomweb", orthanc.url, "--model", pushed_served_model, "--output", str(output),
                   "--num_workers", "0", "--eager", "--store_results"]
        wrong = "Authorization: Basic " + base64.b64encode(b"screening:guess").decode()
        for credentials in ([], ["--dicomweb_header", wrong]):
            message = cli_error(predict, command + credentials)
            assert "\n" not in message and f"The PACS at {orthanc.url} refused the credentials (HTTP 401)" in message
            assert "--dicomweb_header" in message and not output.exists()
        predict(command + ["--dicomweb_header", good])
        record = json.loads(record_file(output).read_text())
        commit = HfApi().model_info(pushed_served_model).sha
        assert record["model"] == pushed_served_model and record["revision"] == commit
        found = DICOMwebClient(orthanc.url, headers=parse_headers([good])).search_for_instances(
            search_filters={"Modality": "SR"})
        assert len(found) == len(rows_of(output)) == 2
        report = DICOMwebClient(orthanc.url, headers=parse_headers([good])).retrieve_instance(
            *(found[0][tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018")))
        parameters = [item.TextValue for item in content_items(report)
                      if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
        assert report_values(report)["Algorithm Version"] == commit  # the Hub revision a site can look up
        assert f"model: {pushed_served_model}" in parameters
        assert f"weights sha256: {record['weights_sha256']}" in parameters
    finally:
        orthanc.stop()
