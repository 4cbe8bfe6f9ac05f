"""Screening an archive with `trainer.predict`: images/s for 1 vs 2 processes, and peak memory vs archive size.

An archive is built from hard links to the shared data's test X-rays (224 px JPEGs), nested as a PACS export nests
them (study/series/instance). Side by side in one run, each command in a fresh process tree:

- throughput: `python -m trainer.predict` (one process, all cores) against `accelerate launch --multi_gpu
  --num_processes 2 -m trainer.predict` (ACCELERATE_USE_CPU: two CPU processes sharing the cores), same archive;
- memory: peak RSS of the largest process of one-process runs over 1,000 and 10,000 listed images (paths are
  streamed, so it should stay flat).

    python benchmarks/archive_screening.py --model outputs/best
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE = REPO_ROOT.parent / "shared" / "data" / "chest_xray_224" / "test"


def archive(folder: Path, count: int) -> Path:
    """`count` hard links to real X-rays, 10 instances per series, 10 series per study."""
    sources = sorted(SOURCE.glob("*/*.jpeg"))
    for number in range(count):
        series = folder / f"study{number // 100:04d}" / f"series{number // 10 % 10}"
        series.mkdir(parents=True, exist_ok=True)
        os.link(sources[number % len(sources)], series / f"{number:06d}.jpeg")
    return folder


def timed(command: list[str], environment: dict) -> tuple[float, int]:
    """Wall seconds and the peak RSS (MB) of the largest process of `command`, run in a fresh process tree."""
    probe = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
             f"subprocess.run({command!r}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=environment, check=True)
    seconds, kilobytes = result.stdout.split()
    return float(seconds), int(kilobytes) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer.")
    parser.add_argument("--images", type=int, default=1000, help="Images for the throughput comparison.")
    args = parser.parse_args()
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        small, large = archive(Path(scratch) / "small", 1000), archive(Path(scratch) / "large", 10_000)
        throughput = archive(Path(scratch) / "throughput", args.images)

        def predict(folder: Path, output: str, launcher: list[str]) -> tuple[float, int]:
            return timed([*launcher, "-m", "trainer.predict", str(folder), "--model", args.model, "--output",
                          str(Path(scratch) / output), "--overwrite"], environment)

        one, _ = predict(throughput, "one.csv", [sys.executable])
        two, _ = predict(throughput, "two.csv", [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                                 "--num_processes", "2"])
        _, rss_small = predict(small, "small.csv", [sys.executable])
        _, rss_large = predict(large, "large.csv", [sys.executable])
    print(f"{args.images} images, {os.cpu_count()} cores (wall time includes each command's start-up)")
    print(f"1 process:   {one:7.1f} s  {args.images / one:6.1f} images/s")
    print(f"2 processes: {two:7.1f} s  {args.images / two:6.1f} images/s  ({one / two:.2f}x)")
    print(f"peak RSS, one process: 1,000 images {rss_small} MB, 10,000 images {rss_large} MB "
          f"({rss_large / rss_small:.2f}x; target within 1.10x)")


if __name__ == "__main__":
    main()
