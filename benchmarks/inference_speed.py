"""Inference speed: single-image latency (file bytes → probabilities) and batch throughput, per candidate path.

Compares plain timm eager fp32 (torch.no_grad, contiguous) with the candidates, on real bundled X-rays,
side by side in one run, and checks every candidate's probabilities against the eager ones.

    python benchmarks/inference_speed.py --model outputs/best
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from trainer import PneumoniaClassifier  # noqa: E402
from trainer.preprocessing import load_image  # noqa: E402

IMAGES = sorted((REPO_ROOT / "sample_data" / "chest_xray" / "test").glob("*/*.jpeg"))


def eager(model, batch):
    with torch.no_grad():
        return model(batch).softmax(-1)


def inference_mode(model, batch):
    with torch.inference_mode():
        return model(batch).softmax(-1)


def channels_last(model, batch):
    with torch.inference_mode():
        return model(batch.contiguous(memory_format=torch.channels_last)).softmax(-1)


def candidates(model):
    last = PneumoniaClassifier.from_pretrained(MODEL).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(PneumoniaClassifier.from_pretrained(MODEL).eval())
    return {
        "eager fp32 (baseline)": (model, eager),
        "inference_mode": (model, inference_mode),
        "inference_mode + channels_last": (last, channels_last),
        "torch.compile": (compiled, inference_mode),
    }


def single_latencies(model, run, transform, repeats: int) -> list[float]:
    latencies = []
    for i in range(repeats):
        started = time.perf_counter()
        run(model, transform(load_image(IMAGES[i % len(IMAGES)])).unsqueeze(0))
        latencies.append(time.perf_counter() - started)
    return latencies


def throughput(model, run, batch: torch.Tensor, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        run(model, batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer.")
    parser.add_argument("--repeats", type=int, default=60, help="Single-image predictions per candidate.")
    parser.add_argument("--batch_size", type=int, default=32, help="Batch size for throughput.")
    args = parser.parse_args()
    MODEL = args.model

    model = PneumoniaClassifier.from_pretrained(MODEL).eval()
    transform = model.transform
    batch = torch.stack([transform(load_image(p)) for p in IMAGES[: args.batch_size]])
    reference = eager(model, batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(IMAGES)} real X-rays")
    print(f"{'path':<34}{'p50 ms':>8}{'p95 ms':>8}{'img/s':>8}{'speed-up':>10}{'max |Δp|':>10}")
    base = None
    for name, (candidate, run) in candidates(model).items():
        for _ in range(3):  # warm-up (and compilation)
            run(candidate, batch)
        latencies = sorted(single_latencies(candidate, run, transform, args.repeats))
        p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
        rate = throughput(candidate, run, batch, 5)
        base = base or (p50, rate)
        difference = (run(candidate, batch) - reference).abs().max().item()
        print(f"{name:<34}{1000 * p50:>8.1f}{1000 * p95:>8.1f}{rate:>8.1f}{base[0] / p50:>9.2f}x{difference:>10.1e}")


if __name__ == "__main__":
    main()
