"""What the Space sends for one X-ray, and how long a visitor on a 10 Mbit/s link waits: an earlier app.py
("before", default: the last commit whose app.py showed PNGs) vs the working tree's, side by side in one run.

Both apps serve the same model (`--model`) from this repository's serving package; only app.py differs. Chromium
(Playwright) with its network emulated at 10 Mbit/s down and up, 20 ms latency, opens each app in a fresh context
and, round by round, alternately: uploads a 1600x1300 JPEG (a bundled sample X-ray upscaled, quality 90: the
shared data hold no full-size originals), waits for the preview, clicks Analyse and times until both images of the
comparison slider are drawn; then moves the opacity slider and times until the new overlay is drawn. Bytes are the
response bodies of the app's files (gradio_api/file=) fetched for the answer and for the opacity change.

    python benchmarks/space_bytes.py --model outputs/best [--before 7de8a66 --rounds 3]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app_load import REPO_ROOT, start_app
from PIL import Image
from playwright.sync_api import sync_playwright

from tests.conftest import sample_images
from tests.web import CHROMIUM, CHROMIUM_ARGS

LINK = {"offline": False, "latency": 20, "downloadThroughput": 10e6 / 8, "uploadThroughput": 10e6 / 8}
SLIDER_IMAGES = "#comparison [data-testid=imageslider-image]"


def app_file_at(ref: str, folder: Path) -> Path:
    path = folder / f"app-{ref}.py"
    path.write_text(subprocess.run(["git", "show", f"{ref}:app.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                                   check=True).stdout)
    return path


def one_answer(browser, url: str, xray: Path) -> dict:
    """Bytes and seconds for the answer and for an opacity change, in a fresh context on the emulated link."""
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.context.new_cdp_session(page).send("Network.emulateNetworkConditions", LINK)
    page.goto(url)
    page.get_by_role("button", name="Analyse").wait_for(timeout=120_000)
    fetched = []
    page.on("requestfinished", lambda request: fetched.append(request.sizes()["responseBodySize"])
            if "/gradio_api/file=" in request.url else None)
    page.locator("#upload input[type=file]").set_input_files(str(xray))
    page.locator("#radiograph img").wait_for(timeout=120_000)
    page.wait_for_load_state("networkidle")
    preview_bytes, fetched[:] = sum(fetched), []  # the radiograph shown as soon as it is uploaded
    clicked = time.perf_counter()
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_function(f"[...document.querySelectorAll('{SLIDER_IMAGES}')].length == 2 && "
                           f"[...document.querySelectorAll('{SLIDER_IMAGES}')].every(i => i.complete && i.naturalWidth)",
                           timeout=120_000)
    answer_seconds = time.perf_counter() - clicked
    page.wait_for_load_state("networkidle")
    answer_bytes, fetched[:] = sum(fetched), []
    overlay = page.locator(SLIDER_IMAGES).last.get_attribute("src")
    moved = time.perf_counter()
    opacity = page.locator("input[type=range]").last
    opacity.fill("0.8")
    opacity.dispatch_event("pointerup")
    page.wait_for_function(f"old => document.querySelectorAll('{SLIDER_IMAGES}')[1].src !== old && "
                           f"document.querySelectorAll('{SLIDER_IMAGES}')[1].complete", arg=overlay, timeout=120_000)
    opacity_seconds = time.perf_counter() - moved
    page.wait_for_load_state("networkidle")
    page.context.close()
    return {"answer_bytes": answer_bytes, "answer_s": answer_seconds, "opacity_bytes": sum(fetched),
            "opacity_s": opacity_seconds, "preview_bytes": preview_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved model folder (a run's best/) or Hub id.")
    parser.add_argument("--before", default="7de8a66", help="The git ref whose app.py is 'before'.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    folder = Path(tempfile.mkdtemp(prefix="space-bytes-"))
    xray = folder / "xray.jpeg"
    Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L").resize((1600, 1300), Image.BICUBIC).save(
        xray, quality=90)
    apps = {"before": start_app(args.model, app_file_at(args.before, folder)), "after": start_app(args.model)}
    results = {name: [] for name in apps}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for _ in range(args.rounds):
                for name, (_, url) in apps.items():
                    results[name].append(one_answer(browser, url, xray))
            browser.close()
    finally:
        for process, _ in apps.values():
            process.kill()
    print(f"upload: {xray.stat().st_size / 1e3:.0f} kB JPEG, 1600x1300, shown at 1024 px; link 10 Mbit/s, 20 ms; "
          f"medians of {args.rounds} rounds")
    print(f"{'':42}{'before':>10}{'after':>10}{'after/before':>14}")
    for result in (r for rounds in results.values() for r in rounds):
        result["total_bytes"] = result["preview_bytes"] + result["answer_bytes"]
    for key, label, unit in (("preview_bytes", "preview on upload: files fetched", 1e3),
                             ("answer_bytes", "answer: files fetched", 1e3),
                             ("total_bytes", "one X-ray in all: files fetched", 1e3), ("answer_s", "answer: click to drawn", 1),
                             ("opacity_bytes", "opacity change: files fetched", 1e3),
                             ("opacity_s", "opacity change: to drawn", 1)):
        before, after = (statistics.median(r[key] for r in results[name]) for name in ("before", "after"))
        suffix = " kB" if unit == 1e3 else " s"
        print(f"{label + suffix:42}{before / unit:10.2f}{after / unit:10.2f}{after / before:14.2f}")


if __name__ == "__main__":
    main()
