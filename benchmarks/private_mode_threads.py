"""Private mode on one WebAssembly thread vs every core (cross-origin isolated), side by side in one run.

Deploys the run's static Space on the loopback Hub as benchmarks/private_mode.py does, serves its files twice with
`trainer.static_server`: without the isolation headers (what the page got before: one thread) and with the static
Space's custom_headers (isolated: ONNX Runtime Web on navigator.hardwareConcurrency threads). One Chromium page per
server; the same X-rays are picked alternately in each, round by round, and the page's own preprocessing +
inference time (data-milliseconds) is compared. The answers must agree to 1e-6.

    python benchmarks/private_mode_threads.py --run outputs [--images 10 --rounds 3]
"""

import argparse
import statistics
import sys

from playwright.sync_api import sync_playwright

from private_mode import IMAGES, deploy  # sets the loopback Hub's environment before huggingface_hub loads
from tests.web import CHROMIUM, CHROMIUM_ARGS
from trainer.static_server import serve_in_background


def open_page(browser, url: str):
    page = browser.new_context().new_page()  # a context of its own, as a visitor's browser
    page.goto(url)
    page.locator("#xray:enabled").wait_for(timeout=300_000)
    return page


def pick(page, path) -> dict:
    page.evaluate("document.getElementById('result').dataset.file = ''")  # the same file may be picked again
    page.locator("#xray").set_input_files([])
    page.locator("#xray").set_input_files(str(path))
    result = page.locator(f'#result[data-file="{path.name}"]')
    result.wait_for(timeout=120_000)
    return result.evaluate("element => ({...element.dataset})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="A finished training run (the trainer's --output_dir).")
    parser.add_argument("--images", type=int, default=10, help="X-rays per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds, each picking every X-ray in both pages.")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    site = deploy(args.run)
    servers = {"one thread": serve_in_background(site, isolated=False), "isolated": serve_in_background(site)}
    images = IMAGES[: args.images]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pages = {name: open_page(browser, f"http://127.0.0.1:{server.server_port}/") for name, server in servers.items()}
        for name, page in pages.items():
            print(f"{name}: crossOriginIsolated={page.evaluate('self.crossOriginIsolated')}; "
                  f"{page.locator('#model').inner_text()}")
        for page in pages.values():
            pick(page, images[0])  # warm-up: the first run builds ONNX Runtime Web's kernels
        times = {name: [] for name in pages}
        answers = {name: {} for name in pages}
        for _ in range(args.rounds):
            for path in images:
                for name, page in pages.items():
                    answer = pick(page, path)
                    times[name].append(float(answer["milliseconds"]))
                    answers[name][path] = float(answer["pneumonia"])
        browser.close()
    largest = max(abs(answers["one thread"][p] - answers["isolated"][p]) for p in images)
    single, isolated = (statistics.median(times[name]) for name in ("one thread", "isolated"))
    print(f"per X-ray, page's preprocessing + inference, median of {len(times['isolated'])}: one thread "
          f"{single:.0f} ms, isolated {isolated:.0f} ms: {single / isolated:.2f}x faster isolated; "
          f"largest |dP(PNEUMONIA)| between them {largest:.1e}")


if __name__ == "__main__":
    main()
