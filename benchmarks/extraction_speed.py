"""Feature-extraction throughput (images/s): fp32 vs bf16, NCHW vs channels_last, eager vs ONNX Runtime; on the
GPU when there is one.

1. Backbone only, on batches already on the device: what each precision and memory layout can do.
2. The trainer's own extraction (`trainer.features.Extractor`: features and guard statistics) over real JPEGs
   decoded by DataLoader workers: eager channels_last under Accelerate's `--mixed_precision no` and `bf16`, and
   (on a CPU) ONNX Runtime in fp32, and how far each engine's features are from eager fp32's.

    python benchmarks/extraction_speed.py --data_dir sample_data/chest_xray --repeat 8 --num_workers 8
"""

import argparse
import sys
import time
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serving.preprocessing import eval_transform  # noqa: E402
from trainer.data import load_chest_xray, make_loader  # noqa: E402
from trainer.features import Extractor  # noqa: E402
from trainer.model import model_for_training  # noqa: E402

PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def backbone_rate(model, device, batch_size: int, precision: str, memory_format, steps: int) -> float:
    pixels = torch.randn(batch_size, *model.preprocessing["input_size"], device=device).contiguous(
        memory_format=memory_format)
    backbone = model.backbone.to(memory_format=memory_format)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for _ in range(3):
            backbone(pixels)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            backbone(pixels)
        synchronize(device)
    model.backbone.to(memory_format=torch.contiguous_format)
    return steps * batch_size / (time.perf_counter() - started)


def extraction(model, split, precision: str, engine: str, batch_size: int,
               num_workers: int) -> tuple[float, torch.Tensor]:
    """(images/s, features) of the trainer's extraction by `engine` under Accelerate's mixed precision `precision`
    (the ONNX export happens before the clock starts)."""
    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per precision in this process
    accelerator = Accelerator(mixed_precision=PRECISIONS[precision])
    model.to(accelerator.device)
    loader = accelerator.prepare(make_loader(split, eval_transform(model.preprocessing), batch_size, False,
                                             num_workers))
    extractor = Extractor(model, engine)
    if engine == "onnxruntime":
        extractor.session
    started = time.perf_counter()
    features, _ = extractor(loader, accelerator, f"{engine} {precision}")
    return len(split) / (time.perf_counter() - started), torch.from_numpy(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="sample_data/chest_xray", help="Folder with train/ and test/.")
    parser.add_argument("--repeat", type=int, default=1, help="Pass over train/ this many times (decoded each time).")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--backbone_steps", type=int, default=20)
    args = parser.parse_args()

    device = Accelerator().device
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    torch.manual_seed(0)
    model = model_for_training("resnet18", pretrained=False, head_hidden_dim=256, dropout=0.5).to(device)

    print(f"\n1. backbone only, batch {args.batch_size} on the device")
    rates = {}
    for precision in PRECISIONS:
        for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            rates[precision, layout] = backbone_rate(model, device, args.batch_size, precision, memory_format,
                                                     args.backbone_steps)
    base = rates["fp32", "NCHW"]
    for (precision, layout), rate in rates.items():
        print(f"   {precision:<5} {layout:<14} {rate:>9.0f} img/s  {rate / base:5.2f}x")

    split = datasets.concatenate_datasets([load_chest_xray(args.data_dir)["train"]] * args.repeat)
    print(f"\n2. trainer extraction, {len(split)} real JPEGs, {args.num_workers} DataLoader workers")
    runs = [("eager channels_last", "fp32", "eager"), ("eager channels_last", "bf16", "eager")]
    runs += [("onnxruntime", "fp32", "onnxruntime")] if device.type == "cpu" else []
    measured = {run: extraction(model, split, run[1], run[2], args.batch_size, args.num_workers) for run in runs}
    base_rate, base_features = measured[runs[0]]
    for (engine, precision, _), (rate, features) in measured.items():
        relative = ((features - base_features).abs().max() / base_features.abs().max()).item()
        print(f"   {engine:<20} {precision:<5} {rate:>9.0f} img/s  {rate / base_rate:5.2f}x;"
              f" max |features - eager fp32| / max |eager fp32| = {relative:.1e}")


if __name__ == "__main__":
    main()
