"""Private mode (the model in the browser) vs the Python app, side by side in one run, on this machine.

Starts the test Hub-protocol server on loopback, pushes a run with `trainer.push` (which adds onnx/),
deploys the static Space with `push_space --static` and serves it from a local static server; then
  - browser: Debian's Chromium via Playwright, a fresh profile: time from opening the page to the first
    result (page, ONNX Runtime Web and model downloaded from loopback, session built, one X-ray analysed),
    then the per-image time of N more X-rays (file picked → answer shown, and the page's own
    preprocess + inference time);
  - Python: `python app.py` with MODEL_ID = the same Hub repo and an empty HF cache: time from starting the
    process to the first result through gradio_client, then per-image time of the same N X-rays
    (one client, the app's answer with its Grad-CAM overlay, as the page's);
  - for reference, the model alone in this Python process (`load_model`: ONNX Runtime, native, 2 threads),
    `analyse(path, heatmap=True)` per image: no HTTP, no drawing.
Prints the page's download size and the tab's memory too, and checks the page's answers for every bundled
sample test image against Python's (PneumoniaClassifier.analyse).

    python benchmarks/private_mode.py --run outputs [--images 20]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
HUB_PORT = 8791
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}", HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
                  HF_HOME=tempfile.mkdtemp(prefix="private-mode-bench-"))

import psutil  # noqa: E402
from app_load import IMAGES, start_app  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from huggingface_hub import snapshot_download  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from serving.loading import load_model  # noqa: E402
from serving.predictor import Predictor  # noqa: E402
from tests.hub_server import TOKEN, USER, make_server  # noqa: E402
from tests.web import CHROMIUM, CHROMIUM_ARGS, serve_folder  # noqa: E402
from trainer.push import push_run  # noqa: E402
from trainer.push_space import push_space  # noqa: E402

MODEL_ID, SPACE_ID = f"{USER}/pneumonia-detector", f"{USER}/private-mode"


def deploy(run: str) -> Path:
    """Push the run and the static Space to the loopback Hub, print the download size; returns the Space's files."""
    hub = make_server(HUB_PORT)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    push_run(run, MODEL_ID, token=TOKEN)
    push_space(SPACE_ID, MODEL_ID, token=TOKEN, static=True)
    site = Path(snapshot_download(SPACE_ID, repo_type="space", token=TOKEN, local_dir=tempfile.mkdtemp()))
    model = Path(snapshot_download(MODEL_ID, token=TOKEN, allow_patterns="onnx/*", local_dir=tempfile.mkdtemp()))
    page_bytes = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and p.name != "README.md"
                     and ".cache" not in p.parts)
    model_bytes = sum(p.stat().st_size for p in (model / "onnx").iterdir())
    print(f"download: page + ONNX Runtime Web {page_bytes / 1e6:.1f} MB, model {model_bytes / 1e6:.1f} MB, "
          f"total {(page_bytes + model_bytes) / 1e6:.1f} MB")
    return site


def tab_memory_mb() -> float:
    """Resident memory of the largest Chromium renderer (the page's tab: its WebAssembly heap and canvases)."""
    renderers = [p for p in psutil.process_iter(["name", "cmdline"])
                 if "chrom" in (p.info["name"] or "") and "--type=renderer" in (p.info["cmdline"] or [])]
    return max(p.memory_info().rss for p in renderers) / 1e6


def browser_run(url: str, images: list[Path], checked: list[Path]) -> dict:
    """Times for `images` (the first one cold), then the page's answers for every image of `checked`."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context().new_page()

        def pick(path: Path) -> dict:
            page.locator("#xray").set_input_files(str(path))
            result = page.locator(f'#result[data-file="{path.name}"]')
            result.wait_for(timeout=120_000)
            return result.evaluate("element => ({...element.dataset})")

        started = time.perf_counter()
        page.goto(url)
        page.locator("#xray:enabled").wait_for(timeout=300_000)
        pick(images[0])
        first = time.perf_counter() - started
        walls, inference = [], []
        for path in images[1:]:
            picked = time.perf_counter()
            inference.append(float(pick(path)["milliseconds"]) / 1000)
            walls.append(time.perf_counter() - picked)
        memory = tab_memory_mb()
        answers = {path: pick(path) for path in checked}
        browser.close()
    return {"first": first, "per_image": statistics.median(walls), "inference": statistics.median(inference),
            "tab_memory_mb": memory, "answers": answers}


def compare_with_python(predictor: Predictor, answers: dict) -> None:
    """The page's answers against the Predictor's: largest P(PNEUMONIA) difference, agreements."""
    expected = {path: predictor.analyse(path) for path in answers}
    largest = max(abs(float(a["pneumonia"]) - expected[p].probabilities["PNEUMONIA"]) for p, a in answers.items())
    decisions = sum(a["decision"] == expected[p].decision for p, a in answers.items())
    verdicts = sum(a["looksLikeXray"] == str(expected[p].looks_like_xray).lower() for p, a in answers.items())
    print(f"page vs Python on {len(answers)} sample test images: largest |dP(PNEUMONIA)| {largest:.2e}, "
          f"decisions agree {decisions}/{len(answers)}, not-an-X-ray verdicts agree {verdicts}/{len(answers)}")


def python_app_times(images: list[Path]) -> dict:
    started = time.perf_counter()
    process, url = start_app(MODEL_ID)
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(images[0])), 0.4, api_name="/predict")
        first = time.perf_counter() - started
        walls = []
        for path in images[1:]:
            picked = time.perf_counter()
            client.predict(handle_file(str(path)), 0.4, api_name="/predict")
            walls.append(time.perf_counter() - picked)
    finally:
        process.kill()
    return {"first": first, "per_image": statistics.median(walls)}


def in_process_time(predictor: Predictor, images: list[Path]) -> float:
    predictor.analyse(images[0], heatmap=True)
    walls = []
    for path in images[1:]:
        started = time.perf_counter()
        predictor.analyse(path, heatmap=True)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="A finished training run (the trainer's --output_dir).")
    parser.add_argument("--images", type=int, default=20, help="X-rays timed after the first.")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    images = IMAGES[: args.images + 1]
    url = f"http://127.0.0.1:{serve_folder(deploy(args.run)).server_port}/"
    browser = browser_run(url, images, IMAGES)
    predictor = Predictor(load_model(str(Path(args.run) / "best")))
    compare_with_python(predictor, browser["answers"])
    shutil.rmtree(os.environ["HF_HOME"], ignore_errors=True)  # the app downloads the model cold as well
    python = python_app_times(images)
    print(f"{'':34}{'browser':>10}{'Python app':>12}{'browser / app':>15}")
    print(f"{'time to first result (cold), s':34}{browser['first']:10.2f}{python['first']:12.2f}"
          f"{browser['first'] / python['first']:15.2f}")
    print(f"{'per image, s (median of ' + str(args.images) + ')':34}{browser['per_image']:10.3f}"
          f"{python['per_image']:12.3f}{browser['per_image'] / python['per_image']:15.2f}")
    print(f"{'  of which preprocess + inference':34}{browser['inference']:10.3f}")
    print(f"{'tab memory after the last image, MB':34}{browser['tab_memory_mb']:10.0f}")
    model_alone = in_process_time(predictor, images)
    print(f"{'model alone in Python, per image, s':34}{'':10}{model_alone:12.3f}"
          f"{browser['inference'] / model_alone:15.2f}  (page's preprocess + inference / this)")


if __name__ == "__main__":
    main()
