"""Screening a PACS over DICOMweb (`trainer.predict --dicomweb URL`), with dicomweb-client: the instances a QIDO-RS
query names, retrieved one at a time over WADO-RS, and, with --store_results, a DICOM Structured Report per screened
instance stored back into its study over STOW-RS.

The query's instances are sorted by study, series and SOP instance UID, so every process of a multi-process run
agrees on the order and takes every N-th one, as for a folder. Each instance is fetched into a temporary file that
the project's one DICOM reader reads, then removed: never more than one instance per DataLoader worker on disk or
in memory. The results' `path` is the instance's WADO-RS URL, so resuming and merging key on it as on a file path.

The report is TID 1500 (Measurement Report) made with highdicom: the template IHE AI Results builds on, which viewers
and archives that show AI results read. One measurement group references the screened image by SOP Instance UID and
holds the decision (a finding: pneumonia, normal, or "not a chest X-ray"), P(PNEUMONIA), the threshold, the guard
distance and limit; the algorithm identification names the model (its id; as its version the Hub commit for a model
loaded from the Hub, else the sha256 of its weights and buffers, as the results file records both); the series
description carries the research-only disclaimer. The report's UIDs are derived from the screened instance and the
model's sha256, so a rerun recognises the report it stored before and stores nothing twice. Patient and study modules
are copied from the source by highdicom, as DICOM requires; the report stays in the PACS.
"""

import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from serving.images import InputImageError
from serving.labels import NOT_A_CHEST_XRAY

REPORT_SERIES_DESCRIPTION = "Pneumonia Detector: research demo, not for clinical use"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, for UIDs made from (instance, model)
FINDINGS = {"PNEUMONIA": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
            "NORMAL": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
            NOT_A_CHEST_XRAY: hd.sr.CodedConcept("NOT_A_CHEST_XRAY", "99PNEUMODET", "Not a chest X-ray")}
ALGORITHM = "Pneumonia Detector"
_clients: dict = {}  # one client (HTTP session) per PACS, per process


class PacsError(RuntimeError):
    """The PACS cannot be reached, or refuses the credentials: the message names the URL and what to check."""


def parse_headers(values: list[str]) -> dict[str, str]:
    """`--dicomweb_header "Name: value"` options as a header dict; ValueError for one without a colon."""
    headers = {}
    for value in values:
        name, colon, content = value.partition(":")
        if not colon:
            raise ValueError(f"--dicomweb_header {value!r} is not 'Name: value' (e.g. 'Authorization: Bearer TOKEN').")
        headers[name.strip()] = content.strip()
    return headers


def client(url: str, headers: tuple) -> DICOMwebClient:
    if (url, headers) not in _clients:
        _clients[url, headers] = DICOMwebClient(url, headers=dict(headers))
        # a busy PACS (429, 503...) gets a few quick retries; the client's default (5, from 1 s doubling) made a
        # PACS that is down take half a minute to say so
        _clients[url, headers].set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)
    return _clients[url, headers]


@contextmanager
def talking_to(url: str):
    """PacsError, in one line naming `url` and what to check, for a PACS that does not answer or refuses us."""
    try:
        yield
    except requests.ConnectionError as error:
        raise PacsError(f"The PACS at {url} cannot be reached ({type(error).__name__}); check the URL and that the "
                        "PACS is running and reachable from this machine.") from error
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PacsError(f"The PACS at {url} refused the credentials (HTTP {status}); check --dicomweb_header "
                            "(e.g. 'Authorization: Bearer TOKEN').") from error
        raise


@dataclass(frozen=True)
class Instance:
    """One instance in a PACS; `str()` is its WADO-RS URL, the key of its row."""

    url: str
    headers: tuple
    study: str
    series: str
    sop: str

    def __str__(self) -> str:
        return f"{self.url}/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    @property
    def stem(self) -> str:  # names its heatmap, as a file's stem does
        return self.sop

    @classmethod
    def from_url(cls, wado_url: str, headers: tuple) -> "Instance":
        root, _, rest = wado_url.partition("/studies/")
        study, _, rest = rest.partition("/series/")
        series, _, sop = rest.partition("/instances/")
        return cls(root, headers, study, series, sop)

    @contextmanager
    def local_copy(self):
        """The instance in a temporary file while the block runs; InputImageError when the PACS cannot give it,
        PacsError when the PACS stops answering."""
        with tempfile.TemporaryDirectory(prefix="pneumonia-pacs-") as folder:
            path = Path(folder) / f"{self.sop}.dcm"
            try:
                with talking_to(self.url):
                    dataset = client(self.url, self.headers).retrieve_instance(self.study, self.series, self.sop)
            except PacsError:
                raise
            except Exception as error:  # HTTP errors and damaged multipart bodies: this instance only
                raise InputImageError(f"This instance cannot be retrieved from the PACS ({type(error).__name__}: "
                                      f"{' '.join(str(error).split())}).") from error
            dataset.save_as(path, enforce_file_format=False)
            yield path


class PacsWalk:
    """The instances of a DICOMweb query as ArchiveWalk gives a folder's files: (instance, True) pairs and
    `images()`, sorted by study, series and SOP instance UID."""

    def __init__(self, url: str, headers: dict[str, str], study_uids: list[str], modalities: list[str],
                 since: str | None):
        self.url, self.headers = url.rstrip("/"), tuple(sorted(headers.items()))
        filters = [{"Modality": modality, **({"StudyDate": f"{since}-"} if since else {})} for modality in modalities]
        found = set()
        with talking_to(self.url):
            for study in study_uids or [None]:
                for search in filters:
                    for match in client(self.url, self.headers).search_for_instances(
                            study_instance_uid=study, search_filters=search, get_remaining=True):
                        found.add(tuple(match[tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018")))
        self.instances = [Instance(self.url, self.headers, *uids) for uids in sorted(found)]

    def __iter__(self):
        return ((instance, True) for instance in self.instances)

    def images(self):
        return iter(self.instances)


def report_uids(instance: Instance, weights_sha256: str) -> tuple[str, str]:
    """(series, SOP instance) UIDs of the report on `instance` by the model `weights_sha256`: one series per study and
    model, one report per instance and model."""
    return (generate_uid(UID_ROOT, [instance.study, weights_sha256]),
            generate_uid(UID_ROOT, [instance.sop, weights_sha256]))


# Type 2 attributes of the patient and study modules: present in a valid instance, possibly empty; highdicom copies
# them into the report, so a source that lacks one gets it empty (as DICOM allows)
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def structured_report(source: pydicom.Dataset, row: dict, record: dict, series_uid: str, sop_uid: str) -> hd.sr.EnhancedSR:
    """The TID 1500 report of one screened instance (see the module docstring)."""
    for keyword in TYPE_2:
        if keyword not in source:
            setattr(source, keyword, "")
    # the version a site can look up: the Hub commit for a model from the Hub, else the weights' sha256
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM, version=record.get("revision") or record["weights_sha256"],
                                              parameters=[f"model: {record['model']}",
                                                          f"weights sha256: {record['weights_sha256']}"])
    probability = [hd.sr.Measurement(name=hd.sr.CodedConcept("PNEUMONIA_PROBABILITY", "99PNEUMODET",
                                                             "Calibrated probability of pneumonia"),
                                     value=float(row["PNEUMONIA"]), unit=codes.UCUM.NoUnits)] if row.get("PNEUMONIA") else []
    measurements = probability + [
        hd.sr.Measurement(name=hd.sr.CodedConcept("DECISION_THRESHOLD", "99PNEUMODET", "Decision threshold"),
                          value=float(record["decision_threshold"]), unit=codes.UCUM.NoUnits),
        hd.sr.Measurement(name=hd.sr.CodedConcept("GUARD_DISTANCE", "99PNEUMODET", "Not-an-X-ray guard distance"),
                          value=float(row["guard_distance"]), unit=codes.UCUM.NoUnits),
    ] + ([hd.sr.Measurement(name=hd.sr.CodedConcept("GUARD_LIMIT", "99PNEUMODET", "Not-an-X-ray guard limit"),
                            value=float(record["guard_limit"]), unit=codes.UCUM.NoUnits)]
         if math.isfinite(record["guard_limit"]) else [])  # a model saved before its guard was fitted has none
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(UID_ROOT, [sop_uid]),
                                                     identifier="Pneumonia screening"),
        algorithm_id=algorithm, source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding,
                                                             value=FINDINGS[row["prediction"]])])
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                     observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                                         uid=generate_uid(UID_ROOT, [record["weights_sha256"]]), name=ALGORITHM,
                                         model_name=record["model"][-64:]))
    content = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                      procedure_reported=hd.sr.CodedConcept("168731009", "SCT", "Chest X-ray"),
                                      imaging_measurements=[group])
    report = hd.sr.EnhancedSR(evidence=[source], content=content[0], series_instance_uid=series_uid, series_number=990,
                              sop_instance_uid=sop_uid, instance_number=1, manufacturer=ALGORITHM, is_complete=True)
    report.SeriesDescription = REPORT_SERIES_DESCRIPTION
    return report


def heatmap_image(source: pydicom.Dataset, overlay: Path, series_uid: str, sop_uid: str) -> hd.sc.SCImage:
    """The Grad-CAM overlay as a Secondary Capture image in the source's study (RGB, as the model saw the image)."""
    with Image.open(overlay) as image:
        pixels = np.asarray(image.convert("RGB"))
    capture = hd.sc.SCImage.from_ref_dataset(
        source, pixels, "RGB", 8, "PATIENT", series_uid, 991, sop_uid, 1, ALGORITHM,
        patient_orientation=tuple(source.get("PatientOrientation") or ("L", "F")))
    capture.SeriesDescription = f"{ALGORITHM} Grad-CAM: research demo, not for clinical use"[:64]
    return capture


def store_report(row: dict, record: dict, headers: tuple, with_heatmap: bool = False) -> bool:
    """Store the report of one screened row in its study (and, `with_heatmap`, its Grad-CAM overlay as a Secondary
    Capture), unless this model's report is there already; True when stored."""
    instance = Instance.from_url(row["path"], headers)
    pacs = client(instance.url, instance.headers)
    series_uid, sop_uid = report_uids(instance, record["weights_sha256"])
    with talking_to(instance.url):
        if pacs.search_for_instances(study_instance_uid=instance.study, search_filters={"SOPInstanceUID": sop_uid}):
            return False
        metadata = pacs.retrieve_instance_metadata(instance.study, instance.series, instance.sop)
        metadata.pop("7FE00010", None)  # the pixels' bulk-data link: the report needs the headers only
        source = pydicom.Dataset.from_json(metadata)
        stored = [structured_report(source, row, record, series_uid, sop_uid)]
        if with_heatmap and row.get("heatmap"):
            stored.append(heatmap_image(source, Path(row["heatmap"]), *report_uids(instance, record["weights_sha256"]
                                                                                   + "heatmap")))
        pacs.store_instances(stored)
    return True
