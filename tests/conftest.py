"""Shared fixtures. Nothing here reaches the network: Hub traffic goes to a server on loopback."""

import asyncio
import atexit
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Everything the tests and the processes they start write to a temporary folder (Gradio's client makes one per
# downloaded file) lands in one folder of the session's, removed when it ends.
SESSION_TMP = tempfile.mkdtemp(prefix="pneumonia-tests-")
os.environ["TMPDIR"] = SESSION_TMP
tempfile.tempdir = SESSION_TMP
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)

# Read at import time by huggingface_hub / datasets: set before anything imports them. The Hub is
# the test server on loopback (fixture `hub`); Xet uploads are off since only real Hubs speak Xet.
HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="pneumonia-tests-hf-home-")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# The tests' Hub is on loopback, so a user's HF_HUB_OFFLINE=1 (which the README recommends offline) must not
# switch the client off here; tests of offline behaviour set it in their own subprocesses.
os.environ["HF_HUB_OFFLINE"] = "0"

import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# Runs with the same data, seed, backbone and views share cached features (the backbone's ONNX export is in the
# session's export cache, under HF_HOME), so most test runs skip extraction, also in new Python processes. One
# un-augmented view per image: a third of the default's extraction, for tests that need *a* trained model
# (augmented views are tested in test_features.py and test_resume.py).
SHARED_FEATURE_CACHE = tempfile.mkdtemp(prefix="pneumonia-tests-feature-cache-")
FAST_TRAINING = ["--no_pretrained", "--num_workers", "0", "--cache_dir", SHARED_FEATURE_CACHE, "--cache_views", "1"]
SAMPLE_DIR = REPO_ROOT / "sample_data" / "chest_xray"
# The session's trained models refuse non-X-rays (the serving tests' refusal paths) with a guard at alpha = 0.05: at
# the bundled sample's size (30 validation + 270 cross-fitted training X-rays) the default alpha of 0.005 puts the
# limit at the calibration tail, where pydicom's CT slice and 12 of the 35 non-X-ray images pass (measured for issue
# 39; tests/test_feature_guard.py trains at the default).
SERVING_GUARD = ["--guard_false_refusal", "0.05"]


# Tests that use these (the session's trained models, the app, the browser) are marked slow by
# pytest_collection_modifyitems; tests that train or start a new Python process carry the mark themselves.
SLOW_FIXTURES = {"trained_run", "served_run", "served_model", "served_predictor", "app_url", "pushed_served_model",
                 "browser"}


def pytest_collection_modifyitems(items):
    """Mark slow every test that needs a slow fixture, so none slips into the everyday tier (`-m "not slow"`)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def sample_images(split: str, class_name: str, count: int) -> list[Path]:
    return sorted((SAMPLE_DIR / split / class_name).glob("*.jpeg"))[:count]


def cli_error(main, argv: list[str]) -> str:
    """The error a command line's `main(argv)` stops with, run in this process as transformers' example tests do:
    `sys.exit("error: ...")`, which Python prints as one line on stderr with exit status 1, not a traceback."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    message = exited.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    return message


def confidences(label_output: dict) -> dict[str, float]:
    """{label: probability} from a gr.Label's output, as API and MCP clients receive it."""
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def start_clean_python(code: str, cwd, env: dict | None = None):
    """`python -I -c code` started now, in a process whose import path holds no part of this repository, so that the
    test works on meanwhile; returns a function that waits for it and returns the JSON its last line printed."""
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # a full pipe would block it
    process = subprocess.Popen([sys.executable, "-I", "-c", code], cwd=cwd, text=True, stdout=stdout, stderr=stderr,
                               env=env or {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

    def json_answer():
        process.wait(timeout=600)
        printed, errors = (stream.seek(0) or stream.read() for stream in (stdout, stderr))
        assert process.returncode == 0, errors[-3000:]
        return json.loads(printed.strip().splitlines()[-1])
    return json_answer


def start_pipeline(model_id: str, images: list, cwd):
    """transformers' pipeline over `images` in a clean Python (`start_clean_python`): its answers, a list of
    [{label, score, ...}] per image, once the returned function is called."""
    code = ("import json, sys\n"
            "try:\n    import serving\n    sys.exit('serving is importable: not a clean process')\n"
            "except ImportError:\n    pass\n"
            "from transformers import pipeline\n"
            f"classify = pipeline('image-classification', model={model_id!r}, trust_remote_code=True)\n"
            f"print(json.dumps([classify(p) for p in {[str(p) for p in images]!r}]))\n")
    return start_clean_python(code, cwd)


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> str:
    """Wait until a server the test started answers `url`; its page, or the end of its log if it stops or hangs."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode(errors="replace")
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{url} was not served:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def data_url(path, mime: str) -> str:
    """How an MCP client hands the tool a file it holds: a base64 data URL (Gradio also takes http(s) URLs)."""
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def mcp_session(app_url: str, calls):
    """Run `calls(session)` in an initialised MCP session with the app; return what it returns. The client's event
    loop runs in a thread of its own: Playwright's sync API (the session's browser) keeps one running in this one."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with streamable_http_client(f"{app_url}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await calls(session)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the bundled real sample (the repository's copy is never modified)."""
    destination = tmp_path / "chest_xray"
    shutil.copytree(SAMPLE_DIR, destination)
    return destination


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    """A 60-image copy of the bundled sample (train 20 + 20, test 10 + 10) for tests of training mechanics (caches,
    resuming, weights files) whose assertions do not depend on the data's size: extraction takes seconds."""
    destination = tmp_path_factory.mktemp("tiny") / "chest_xray"
    for split, count in (("train", 20), ("test", 10)):
        for class_name in ("NORMAL", "PNEUMONIA"):
            (destination / split / class_name).mkdir(parents=True)
            for path in sample_images(split, class_name, count):
                shutil.copy(path, destination / split / class_name)
    return destination


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory) -> Path:
    """A saved, loadable model that was never trained: for tests of errors that come before any prediction."""
    from serving import PneumoniaClassifier

    folder = tmp_path_factory.mktemp("untrained") / "best"
    PneumoniaClassifier().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One real end-to-end training run on the bundled sample, shared by the tests that inspect it (with
    TensorBoard logging, which test_cli.py reads)."""
    from trainer.train import main

    output_dir = tmp_path_factory.mktemp("run")
    results = main([*FAST_TRAINING, "--num_train_epochs", "3", "--lr_patience", "0", "--report_to", "tensorboard",
                    *SERVING_GUARD, "--output_dir", str(output_dir)])
    return output_dir, results


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A trained model that serving tests can tell apart from a coin: trained long enough to spread its
    probabilities, with a threshold far from 0.5 (fixed:0.8), so that the decision and the argmax differ for
    some images. Served by the app fixture."""
    from trainer.train import main

    output_dir = tmp_path_factory.mktemp("served")
    main([*FAST_TRAINING, "--num_train_epochs", "20", "--learning_rate", "0.01", "--lr_patience", "5",
          "--metric_for_best_model", "loss", "--threshold_strategy", "fixed:0.8", *SERVING_GUARD,
          "--output_dir", str(output_dir)])
    return output_dir


@pytest.fixture(scope="session")
def served_model(served_run):
    """The served model, loaded once (eager PyTorch): the reference the app, the CLI and the page are compared with.
    Tests that change its operating point load their own copy."""
    from serving import PneumoniaClassifier

    return PneumoniaClassifier.from_pretrained(served_run / "best")


@pytest.fixture(scope="session")
def served_predictor(served_model):
    """The served model's eager Predictor: the whole answer (decision, guard, heatmap) every entry point must give."""
    from serving import Predictor

    return Predictor(served_model, engine="eager")


@pytest.fixture(scope="session")
def hub():
    """The Hub-protocol test server (tests/hub_server.py), on the loopback port HF_ENDPOINT names."""
    from tests.hub_server import make_server

    server = make_server(HUB_PORT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def pushed_served_model(hub, served_run) -> str:
    """The served model pushed once by trainer.push (weights, card, private mode's onnx/ files) to the test Hub."""
    from tests.hub_server import TOKEN, USER
    from trainer.push import push_run

    model_id = f"{USER}/served-model"
    push_run(served_run, model_id, token=TOKEN)
    return model_id


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's, driven by Playwright) for the whole session; each test opens its own page."""
    from playwright.sync_api import sync_playwright

    from tests.web import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def app_url(served_run, tmp_path_factory):
    """`python app.py` serving the session's served model on a free loopback port."""
    import subprocess
    import sys

    output_dir = served_run
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "MODEL_ID": str(output_dir / "best"), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as log_file:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=log_file, stderr=log_file)
    # While the app imports Gradio, this process exports the served model into the session's export cache, where the
    # app finds it instead of exporting it again (serving/export_cache.py; the later ONNX Runtime tests read it too)
    from serving import PneumoniaClassifier, Predictor

    Predictor(PneumoniaClassifier.from_pretrained(output_dir / "best"))
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, process, log)
    yield url
    process.terminate()
    process.wait(timeout=30)
