"""What the ONNX export cache (serving/export_cache.py) saves a new process: the app's start and a short
`trainer.predict` run, with an empty cache folder vs the folder the previous process filled, side by side.

Each repeat runs cold (a new, empty PNEUMONIA_ONNX_CACHE) then warm (the same folder again), so both see the
same machine state; medians are printed with the warm/cold ratio.

    python benchmarks/export_cache.py --model outputs/best [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app_load import REPO_ROOT, start_app

IMAGES = sorted((REPO_ROOT / "sample_data" / "chest_xray" / "test").glob("*/*.jpeg"))[::25]


def predict_seconds(model: str, cache: Path) -> float:
    """Wall seconds of `python -m trainer.predict` over 5 bundled X-rays, from the command to its CSV."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainer.predict", *map(str, IMAGES), "--model", model, "--output",
                    str(cache.parent / "predictions.csv")], cwd=REPO_ROOT, check=True, capture_output=True,
                   env={**os.environ, "PNEUMONIA_ONNX_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def app_seconds(model: str, cache: Path) -> float:
    """Wall seconds from `python app.py` to its first answered page."""
    os.environ["PNEUMONIA_ONNX_CACHE"] = str(cache)
    started = time.perf_counter()
    process, _ = start_app(model)
    seconds = time.perf_counter() - started
    process.terminate()
    process.wait()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved model folder (outputs/best) or Hub id")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    times = {(task, state): [] for task in ("trainer.predict", "app.py start") for state in ("cold", "warm")}
    for _ in range(args.repeats):
        for task, measure in (("trainer.predict", predict_seconds), ("app.py start", app_seconds)):
            with tempfile.TemporaryDirectory() as folder:
                cache = Path(folder) / "onnx"
                for state in ("cold", "warm"):
                    times[task, state].append(measure(args.model, cache))
    print(f"{'task':<16} {'empty cache s':>14} {'warm cache s':>13} {'warm/cold':>10}   (median of {args.repeats})")
    for task in ("trainer.predict", "app.py start"):
        cold, warm = (statistics.median(times[task, state]) for state in ("cold", "warm"))
        print(f"{task:<16} {cold:>14.1f} {warm:>13.1f} {warm / cold:>10.2f}")


if __name__ == "__main__":
    main()
