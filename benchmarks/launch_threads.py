"""The README's command vs `python -m trainer`: does `accelerate launch` train at full speed on a CPU machine?

Runs the same training (same data subset, epochs, seed) through each launch command, one after another, and
prints wall time, CPU use, the torch thread count each process reported and the ratio to `python -m trainer`:

    python benchmarks/launch_threads.py --data_dir ../shared/data/chest_xray_224 --train_subset 500 --epochs 3

Rows: `python -m trainer`; `accelerate launch -m trainer` (the README's command); the same with
`--num_cpu_threads_per_process 1` (accelerate's default before the trainer corrected it, now only when asked
for); two CPU processes (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`).
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_speed import REPO_ROOT, subset_folder

LAUNCHES = {
    "python -m trainer": ([sys.executable, "-m", "trainer"], {}),
    "accelerate launch -m trainer": (["accelerate", "launch", "-m", "trainer"], {}),
    "  ... --num_cpu_threads_per_process 1": (["accelerate", "launch", "--num_cpu_threads_per_process", "1",
                                                "-m", "trainer"], {}),
    "  ... --multi_gpu --num_processes 2 (CPU)": (["accelerate", "launch", "--multi_gpu", "--num_processes", "2",
                                                    "-m", "trainer"], {"ACCELERATE_USE_CPU": "true"}),
}


def measure(command: list[str], extra_env: dict, trainer_args: list[str]) -> dict:
    """Wall time, CPU seconds of all child processes, and the thread counts the trainer logged."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"} | {"HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    finished = subprocess.run([*command, *trainer_args], cwd=REPO_ROOT, env=env | extra_env,
                              capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    threads = re.findall(r"torch threads: (\d+)", finished.stderr)
    return {"seconds": seconds, "cpu_percent": 100 * cpu / seconds, "threads": "+".join(threads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224",
                        help="Kaggle-layout folder.")
    parser.add_argument("--train_subset", type=int, default=500, help="Training images to use (0 = all of train/).")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs for every run.")
    parser.add_argument("--seed", type=int, default=42)
    args, rest = parser.parse_known_args()

    data = subset_folder(args.data_dir, args.train_subset, args.seed)
    output = Path(tempfile.mkdtemp(prefix="launch-threads-out-"))
    results = {}
    for number, (label, (command, extra_env)) in enumerate(LAUNCHES.items()):
        trainer_args = ["--data_dir", str(data), "--no_pretrained", "--num_train_epochs", str(args.epochs),
                        "--seed", str(args.seed), "--output_dir", str(output / str(number)), *rest]
        results[label] = measure(command, extra_env, trainer_args)
        print(f"measured {label}: {results[label]['seconds']:.0f} s", flush=True)

    baseline = results["python -m trainer"]["seconds"]
    print(f"\ndata: {args.data_dir} ({args.train_subset or 'all'} train images, full test/), {args.epochs} epochs, "
          f"no ImageNet weights, {os.cpu_count()} CPU cores, OMP_NUM_THREADS unset")
    print(f"{'launch':<45}{'wall (s)':>10}{'CPU %':>8}{'torch threads':>15}{'vs python -m':>14}")
    for label, row in results.items():
        print(f"{label:<45}{row['seconds']:>10.1f}{row['cpu_percent']:>8.0f}{row['threads']:>15}"
              f"{row['seconds'] / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
