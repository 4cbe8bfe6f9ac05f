"""Feature-extraction throughput (images/s): fp32 vs bf16, NCHW vs channels_last; on the GPU when there is one.

1. Backbone only, on batches already on the device: what each precision and memory layout can do.
2. The trainer's own extraction (`trainer.features.extract_features`, channels_last) over real JPEGs
   decoded by DataLoader workers, under Accelerate's `--mixed_precision no` and `bf16`, and how far the
   bf16 features are from the fp32 ones.

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
from trainer import PneumoniaClassifier  # noqa: E402
from trainer.data import load_chest_xray, make_loader  # noqa: E402
from trainer.features import extract_features  # noqa: E402

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


def extraction(model, split, precision: str, batch_size: int, num_workers: int) -> tuple[float, torch.Tensor]:
    """(images/s, features) of the trainer's extraction under Accelerate's mixed precision `precision`."""
    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per precision in this process
    accelerator = Accelerator(mixed_precision=PRECISIONS[precision])
    model.to(accelerator.device)
    loader = accelerator.prepare(make_loader(split, eval_transform(model.preprocessing), batch_size, False,
                                             num_workers))
    started = time.perf_counter()
    features = extract_features(model, loader, accelerator, precision)
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
    model = PneumoniaClassifier.for_training("resnet18", pretrained=False, head_hidden_dim=256, dropout=0.5).to(device)

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
    print(f"\n2. trainer extraction, {len(split)} real JPEGs, {args.num_workers} DataLoader workers, channels_last")
    fp32_rate, fp32_features = extraction(model, split, "fp32", args.batch_size, args.num_workers)
    bf16_rate, bf16_features = extraction(model, split, "bf16", args.batch_size, args.num_workers)
    relative = ((bf16_features - fp32_features).abs().max() / fp32_features.abs().max()).item()
    print(f"   fp32 {fp32_rate:>9.0f} img/s\n   bf16 {bf16_rate:>9.0f} img/s  {bf16_rate / fp32_rate:5.2f}x;"
          f" max |bf16 - fp32| / max |fp32| = {relative:.1e}")


if __name__ == "__main__":
    main()
