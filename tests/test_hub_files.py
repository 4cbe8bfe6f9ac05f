"""The files every pushed model repo carries, where users run them: the transformers remote code and its pipeline
under transformers 4.51.3 (the Inference Endpoints image's) and the last 4.x release, each with its own
huggingface_hub, installed by pip into throwaway folders; the Endpoint handler served the way the Inference Endpoints
toolkit serves it (tests/endpoint_toolkit.py); its requirements.txt resolved against the image's pins. Every process
here is a clean Python that cannot import the project. Under the project's own transformers 5, the pipeline is
tested in test_pipeline.py, and the handler is called directly at the end of this file."""

import base64
import csv
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import snapshot_download
from PIL import Image

from tests.app_inputs import non_xray_files, write_dicom
from tests.conftest import REPO_ROOT, free_port, sample_images, start_clean_python, wait_until_serving
from tests.hub_server import TOKEN
from trainer.predict import main as predict

pytestmark = pytest.mark.slow

# transformers release -> what pip installs into its folder (the rest, numpy to torch, is this environment's)
TRANSFORMERS_4 = {"4.51.3": ["transformers==4.51.3", "huggingface_hub==0.30.2", "tokenizers==0.21.4"],
                  "4.57.6": ["transformers==4.57.6", "huggingface_hub==0.36.0", "tokenizers==0.22.2"]}
TOO_OLD = ["transformers==4.50.3"]  # beside 4.51.3's huggingface_hub and tokenizers
# huggingface/huggingface-inference-toolkit 0.5.6: setup.py's pins, the image the Endpoint runs in
ENDPOINT_IMAGE = ["torch==2.5.1", "transformers==4.51.3", "huggingface_hub==0.30.2"]
REPO_REQUIREMENTS = REPO_ROOT / "trainer" / "hub_files" / "requirements.txt"


def pip_install(folder: Path, packages: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--no-deps", "--target", str(folder), *packages],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """{release: folder} of each transformers release pip installed (and "too old": 4.50.3 over 4.51.3's folder)."""
    folders = {version: tmp_path_factory.mktemp(f"transformers-{version}") for version in TRANSFORMERS_4}
    installs = [pip_install(folders[version], packages) for version, packages in TRANSFORMERS_4.items()]
    for process in installs:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    folders["too old"] = tmp_path_factory.mktemp("transformers-too-old")
    subprocess.run(["cp", "-r", *map(str, folders["4.51.3"].iterdir()), str(folders["too old"])], check=True)
    assert pip_install(folders["too old"], ["--upgrade", *TOO_OLD]).wait(timeout=300) == 0
    return folders


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """This environment without PYTHONPATH, with a Hugging Face cache of its own (another huggingface_hub writes it)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HOME": str(tmp_path / "hf-home")}


def pipeline_code(folder: Path, version: str, model_id: str, images: list[Path]) -> str:
    return (f"import json, sys\nsys.path.insert(0, {str(folder)!r})\n"
            "try:\n    import serving\n    sys.exit('serving is importable: not a clean process')\n"
            "except ImportError:\n    pass\n"
            f"import transformers\nassert transformers.__version__ == {version!r}, transformers.__version__\n"
            "from transformers import pipeline\n"
            f"classify = pipeline('image-classification', model={model_id!r}, trust_remote_code=True)\n"
            f"print(json.dumps([classify(p) for p in {[str(p) for p in images]!r}]))\n")


def start_endpoint(folder: Path, model_id: str, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """The toolkit's start-up, by its contract: the repo downloaded into HF_MODEL_DIR, then uvicorn serving the app."""
    port = free_port()
    code = (f"import sys\nsys.path[:0] = [{str(folder)!r}, {str(REPO_ROOT / 'tests')!r}]\n"
            "import uvicorn\n"
            f"uvicorn.run('endpoint_toolkit:app', host='127.0.0.1', port={port}, log_level='warning')\n")
    log = open(tmp_path / "endpoint.log", "w")
    env = isolated_env(tmp_path) | {"HF_MODEL_ID": model_id, "HF_MODEL_DIR": str(tmp_path / "repository")}
    process = subprocess.Popen([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, stdout=log, stderr=log)
    return process, f"http://127.0.0.1:{port}/"


def post(url: str, body: bytes, content_type: str) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("endpoint-inputs")
    xrays = sample_images("test", "NORMAL", 2) + sample_images("test", "PNEUMONIA", 2)
    photo = folder / "photo_of_a_cat.jpeg"
    from skimage import data

    Image.fromarray(data.chelsea()).resize((224, 149)).save(photo, quality=90)  # at most the model's input size
    grey = np.asarray(Image.open(xrays[3]).convert("L")).astype(np.uint16)
    dicom = write_dicom(folder / "xray_12bit", grey * 16, "MONOCHROME1", bits_stored=12)
    return {"xray0": xrays[0], "xray1": xrays[1], "xray2": xrays[2], "xray3": xrays[3], "photograph": photo,
            "dicom": dicom}


@pytest.fixture(scope="module")
def expected(served_run, inputs, tmp_path_factory) -> dict[str, dict]:
    """trainer.predict's row for each input (the reference every answer must equal)."""
    output = tmp_path_factory.mktemp("reference") / "predictions.csv"
    predict([*map(str, inputs.values()), "--model", str(served_run / "best"), "--output", str(output),
             "--num_workers", "0"])
    rows = {row["path"]: row for row in csv.DictReader(output.open())}
    return {name: rows[str(path)] for name, path in inputs.items()}


@pytest.fixture(scope="module")
def answers(installed, pushed_served_model, inputs, tmp_path_factory) -> dict[str, dict]:
    """{release: {"pipeline": [answer per image], "endpoint": {request: (status, answer)}}}: both releases' clean
    pipelines and endpoints run at once; each endpoint gets its requests from four concurrent clients."""
    pictures = [inputs[name] for name in ("xray0", "xray1", "xray2", "xray3", "photograph")]
    started = {}
    for version in TRANSFORMERS_4:
        work = tmp_path_factory.mktemp(f"clean-{version}")
        code = pipeline_code(installed[version], version, pushed_served_model, pictures)
        pipeline_answers = start_clean_python(code, work, env=isolated_env(work))
        started[version] = (pipeline_answers, *start_endpoint(installed[version], pushed_served_model, work), work)
    requests = {name: (path.read_bytes(), "image/jpeg") for name, path in inputs.items() if name != "dicom"}
    requests |= {f"{name} as base64": (json.dumps({"inputs": base64.b64encode(path.read_bytes()).decode()}).encode(),
                                       "application/json") for name, path in inputs.items()}
    requests["garbage"] = (json.dumps({"inputs": base64.b64encode(b"this is not an image").decode()}).encode(),
                           "application/json")
    requests["no inputs"] = (b'{"image": 1}', "application/json")
    results = {}
    for version, (pipeline_answers, endpoint, url, work) in started.items():
        try:
            wait_until_serving(url + "health", endpoint, work / "endpoint.log", seconds=300)
            with ThreadPoolExecutor(4) as clients:
                replies = dict(zip(requests, clients.map(lambda request: post(url, *request), requests.values())))
        finally:
            endpoint.terminate()
            endpoint.wait(timeout=30)
        results[version] = {"pipeline": dict(zip(["xray0", "xray1", "xray2", "xray3", "photograph"],
                                                 pipeline_answers())),
                            "endpoint": replies}
    return results


def assert_same_answer(answer: list[dict], row: dict) -> None:
    """An answer (decision first) is trainer.predict's row: the same label or refusal, probabilities within 1e-4."""
    assert answer[0]["label"] == row["prediction"]
    if row["prediction"] == "NOT_A_CHEST_XRAY":
        assert len(answer) == 1 and row["looks_like_chest_xray"] == "False"
        return
    probabilities = {entry["label"]: entry["probability"] for entry in answer}
    assert probabilities == pytest.approx({"NORMAL": float(row["NORMAL"]), "PNEUMONIA": float(row["PNEUMONIA"])},
                                          abs=1e-4)


@pytest.mark.parametrize("version", TRANSFORMERS_4)
def test_the_pipeline_answers_as_trainer_predict_under_transformers_4(answers, expected, version):
    for name, answer in answers[version]["pipeline"].items():
        assert_same_answer(answer, expected[name])
    assert answers[version]["pipeline"]["photograph"][0]["label"] == "NOT_A_CHEST_XRAY"  # the guard works there too


@pytest.mark.parametrize("version", TRANSFORMERS_4)
def test_the_endpoint_answers_as_trainer_predict_under_the_toolkits_contract(answers, expected, version):
    replies = answers[version]["endpoint"]
    for request, (status, answer) in replies.items():
        if request in ("garbage", "no inputs"):
            continue
        assert status == 200, (request, answer)
        row = expected[request.removesuffix(" as base64")]
        assert_same_answer(answer, row)
        assert answer[0]["looks_like_chest_xray"] is (row["prediction"] != "NOT_A_CHEST_XRAY")
    status, answer = replies["garbage"]
    assert status == 400 and "not an image this endpoint can read" in answer["error"]
    status, answer = replies["no inputs"]
    assert status == 400 and "inputs" in answer["error"]


def test_an_unsupported_transformers_stops_with_the_versions_that_work(installed, pushed_served_model, tmp_path):
    code = pipeline_code(installed["too old"], "4.50.3", pushed_served_model, [])
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=isolated_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "needs transformers >=4.51.3,<5.24" in last_line and "not 4.50.3" in last_line, result.stderr[-2000:]


def test_the_repos_requirements_keep_the_endpoint_images_torch_transformers_and_hub(tmp_path):
    """pip resolves the repo's requirements.txt together with the image's pins: nothing of them is replaced."""
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--disable-pip-version-check", "--report", str(report), "-r", str(REPO_REQUIREMENTS),
                             *ENDPOINT_IMAGE], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for pin in ENDPOINT_IMAGE:
        name, version = pin.split("==")
        assert resolved[name.lower().replace("_", "-")] == version
    required = {line.split("==")[0] for line in REPO_REQUIREMENTS.read_text().splitlines() if line and line[0].isalpha()}
    assert required == {"timm", "pydicom"}  # only what the image lacks


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
