"""Inference speed: single-image latency (file → probabilities) and batch throughput, per candidate path.

Compares plain timm eager fp32 (torch.no_grad, contiguous) with each candidate on real bundled X-rays,
side by side in one run, and checks every candidate's probabilities against the eager ones. The last
two rows are the whole path of the app and the CLI (a `Predictor`: one forward pass for the logits,
the guard's statistics and the heatmap's feature map, plus the guard's float64 distance), eager and through
ONNX Runtime.

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

from serving.images import read_image as load_image  # noqa: E402
from serving.predictor import Predictor  # noqa: E402
from serving.runtime import OnnxForward  # noqa: E402
from trainer import PneumoniaClassifier  # noqa: E402

IMAGES = sorted((REPO_ROOT / "sample_data" / "chest_xray" / "test").glob("*/*.jpeg"))


def no_grad(forward):
    def run(batch):
        with torch.no_grad():
            return forward(batch).softmax(-1)
    return run


def inference_mode(forward, memory_format=torch.contiguous_format):
    def run(batch):
        with torch.inference_mode():
            return forward(batch.contiguous(memory_format=memory_format)).softmax(-1)
    return run


def load(model_dir: str) -> PneumoniaClassifier:
    return PneumoniaClassifier.from_pretrained(model_dir).eval()


def torchscript(model: PneumoniaClassifier):
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, *model.preprocessing["input_size"]))
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def onnxruntime_forward(model_dir: str, allow_spinning: bool):
    exported = OnnxForward(load(model_dir), allow_spinning)
    return lambda batch: exported(batch)[0].softmax(-1)


def analyse(predictor: Predictor):
    """What the app and the CLI run: one serving forward pass and the guard's distances (uncalibrated softmax,
    to compare)."""
    def run(batch):
        logits, statistics, _ = predictor.forward(batch)
        predictor.guard_distances(statistics)
        return logits.softmax(-1)
    return run


def served(model_dir: str) -> Predictor:
    predictor = Predictor(load(model_dir))
    assert predictor.engine == "onnxruntime", "ONNX export failed"
    return predictor


def candidates(model_dir: str) -> dict:
    """name → function(batch of pixel tensors) → probabilities; the first is the baseline."""
    return {
        "eager fp32, no_grad (baseline)": no_grad(load(model_dir)),
        "inference_mode": inference_mode(load(model_dir)),
        "inference_mode + channels_last": inference_mode(load(model_dir).to(memory_format=torch.channels_last),
                                                         torch.channels_last),
        "torch.compile": inference_mode(torch.compile(load(model_dir))),
        "TorchScript freeze + optimize": no_grad(torchscript(load(model_dir))),
        "ONNX Runtime, spinning threads": onnxruntime_forward(model_dir, allow_spinning=True),
        "ONNX Runtime (adopted)": onnxruntime_forward(model_dir, allow_spinning=False),
        "app path + guard, eager (before)": analyse(Predictor(load(model_dir), engine="eager")),
        "app path + guard, ONNX (adopted)": analyse(served(model_dir)),
    }


def single_latencies(run, transform, repeats: int) -> list[float]:
    """Seconds from image file to probabilities: decode, preprocess, forward."""
    latencies = []
    for i in range(repeats):
        started = time.perf_counter()
        run(transform(load_image(IMAGES[i % len(IMAGES)])).unsqueeze(0))
        latencies.append(time.perf_counter() - started)
    return sorted(latencies)


def throughput(run, batch: torch.Tensor, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer.")
    parser.add_argument("--repeats", type=int, default=100, help="Single-image predictions per candidate.")
    parser.add_argument("--batch_size", type=int, default=32, help="Batch size for throughput.")
    args = parser.parse_args()

    transform = load(args.model).transform
    batch = torch.stack([transform(load_image(p)) for p in IMAGES[: args.batch_size]])
    reference = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(IMAGES)} real X-rays")
    print(f"{'path':<34}{'p50 ms':>8}{'p95 ms':>8}{'img/s':>8}{'single':>8}{'batch':>8}{'max |Δp|':>10}")
    for name, run in candidates(args.model).items():
        for _ in range(3):  # warm-up (and compilation)
            run(batch)
        latencies = single_latencies(run, transform, args.repeats)
        p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
        rate = throughput(run, batch, 5)
        probabilities = run(batch)
        reference = reference or (p50, rate, probabilities)
        difference = (probabilities - reference[2]).abs().max().item()
        print(f"{name:<34}{1000 * p50:>8.1f}{1000 * p95:>8.1f}{rate:>8.1f}{reference[0] / p50:>7.2f}x"
              f"{rate / reference[1]:>7.2f}x{difference:>10.1e}")


if __name__ == "__main__":
    main()
