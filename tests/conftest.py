"""Shared fixtures. Nothing here reaches the network: Hub traffic goes to a server on loopback."""

import os
import socket
import tempfile


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Read at import time by huggingface_hub / datasets: set before anything imports them. The Hub is
# the test server on loopback (fixture `hub`); Xet uploads are off since only real Hubs speak Xet.
HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="pneumonia-tests-hf-home-")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import shutil  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# Runs with the same data, seed and backbone share cached features, so most test runs skip extraction.
SHARED_FEATURE_CACHE = tempfile.mkdtemp(prefix="pneumonia-tests-feature-cache-")
FAST_TRAINING = ["--no_pretrained", "--num_workers", "0", "--cache_dir", SHARED_FEATURE_CACHE]
SAMPLE_DIR = REPO_ROOT / "sample_data" / "chest_xray"


def sample_images(split: str, class_name: str, count: int) -> list[Path]:
    return sorted((SAMPLE_DIR / split / class_name).glob("*.jpeg"))[:count]


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the bundled real sample (the repository's copy is never modified)."""
    destination = tmp_path / "chest_xray"
    shutil.copytree(SAMPLE_DIR, destination)
    return destination


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One real end-to-end training run on the bundled sample, shared by the tests that inspect it."""
    from trainer.train import main

    output_dir = tmp_path_factory.mktemp("run")
    results = main([*FAST_TRAINING, "--num_train_epochs", "3", "--lr_patience", "0", "--output_dir", str(output_dir)])
    return output_dir, results


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
def app_url(trained_run, tmp_path_factory):
    """`python app.py` serving the session's trained model on a free loopback port."""
    import subprocess
    import sys
    import time
    import urllib.request

    output_dir, _ = trained_run
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "MODEL_ID": str(output_dir / "best"), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as log_file:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=log_file, stderr=log_file)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"app.py did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
