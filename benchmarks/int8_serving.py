"""int8 serving, measured before it is offered: ONNX Runtime static quantization vs the fp32 ONNX model, side by side.

The serving forward (logits, guard statistics, feature map; serving/runtime.py) is exported in fp32, then
quantized statically (QDQ, per-channel int8 weights, uint8 activations) with activation ranges calibrated on
training images only. Both run through the same Predictor, so calibration, threshold and guard are the model's.
Prints, on the test set: ROC-AUC of each, decision agreement, the guard's refusals of test X-rays and of the
non-X-ray set; then time per image from file (decode + preprocess + forward + guard) and per batch of 32.

    python benchmarks/int8_serving.py --model outputs/best --data_dir ../shared/data/chest_xray_224
Acceptance (issue 15): |ROC-AUC change| <= 0.005, decisions agree on >= 99% of test images, <= 1% of test
X-rays and >= 95% of non-X-rays refused; otherwise fp32 stays.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from sklearn.metrics import roc_auc_score

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dataset_scripts.non_xray_images import non_xray_images  # noqa: E402
from serving import PneumoniaClassifier, read_image  # noqa: E402
from serving.predictor import Predictor  # noqa: E402
from serving.runtime import INPUT, OUTPUTS, OnnxForward, ServingForward, onnx_bytes  # noqa: E402


class Batches(CalibrationDataReader):
    """Preprocessed training images, `batch_size` at a time, as ONNX Runtime's calibrator reads them."""

    def __init__(self, model, paths: list[Path], batch_size: int = 16):
        pixels = torch.stack([model.transform(read_image(p, model.input_size)) for p in paths]).numpy()
        self.batches = iter(np.split(pixels, range(batch_size, len(pixels), batch_size)))

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def export_fp32(model, path: Path) -> None:
    path.write_bytes(onnx_bytes(ServingForward(model), model.preprocessing["input_size"], OUTPUTS))


class FileForward(OnnxForward):
    """OnnxForward over a model file instead of a fresh export (the same session options as the served one)."""

    def __init__(self, path: Path):
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predictor_with(model, forward) -> Predictor:
    predictor = Predictor(model, engine="eager")
    predictor.forward = forward  # this benchmark's own predictor object, not the model's shared one
    return predictor


def answers(predictor: Predictor, pixels: torch.Tensor, batch_size: int = 32) -> list:
    return [p for start in range(0, len(pixels), batch_size) for p in predictor.predict(pixels[start:start + batch_size])]


def seconds_per_call(call, items, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for item in items:
            call(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer.")
    parser.add_argument("--data_dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--calibration_images", type=int, default=256, help="Training images for activation ranges.")
    parser.add_argument("--calibrate_method", choices=[m.name for m in CalibrationMethod], default="MinMax",
                        help="How activation ranges are chosen from the calibration images.")
    args = parser.parse_args()

    model = PneumoniaClassifier.from_pretrained(args.model).eval()
    folder = Path(tempfile.mkdtemp(prefix="int8-"))
    export_fp32(model, folder / "fp32.onnx")
    train = sorted((args.data_dir / "train").glob("*/*.jpeg"))
    calibration = random.Random(0).sample(train, args.calibration_images)
    quantize_static(str(folder / "fp32.onnx"), str(folder / "int8.onnx"), Batches(model, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod[args.calibrate_method])
    engines = {name: predictor_with(model, FileForward(folder / f"{name}.onnx")) for name in ("fp32", "int8")}

    test = sorted((args.data_dir / "test").glob("*/*.jpeg"))
    labels = np.array([p.parent.name == "PNEUMONIA" for p in test])
    pixels = torch.stack([model.transform(read_image(p, model.input_size)) for p in test])
    others = torch.stack([model.transform(image) for image in non_xray_images().values()])
    results = {name: (answers(predictor, pixels), answers(predictor, others)) for name, predictor in engines.items()}

    print(f"model {args.model}; {len(test)} test X-rays, {len(others)} non-X-rays; calibration: "
          f"{args.calibration_images} training images, {args.calibrate_method}; {torch.get_num_threads()} threads")
    print(f"{'':<38}{'fp32':>10}{'int8':>10}")
    for name, (xrays, non_xrays) in results.items():
        results[name] = {
            "ROC-AUC": roc_auc_score(labels, [a.probabilities["PNEUMONIA"] for a in xrays]),
            "test X-rays refused (%)": 100 * np.mean([not a.looks_like_xray for a in xrays]),
            "non-X-rays refused (%)": 100 * np.mean([not a.looks_like_xray for a in non_xrays]),
            "decisions": [a.decision for a in xrays], "p": np.array([a.probabilities["PNEUMONIA"] for a in xrays])}
    for key in ("ROC-AUC", "test X-rays refused (%)", "non-X-rays refused (%)"):
        print(f"{key:<38}{results['fp32'][key]:>10.4f}{results['int8'][key]:>10.4f}")
    agreement = np.mean([a == b for a, b in zip(results["fp32"]["decisions"], results["int8"]["decisions"])])
    print(f"decisions agreeing: {100 * agreement:.2f}%; largest |P(PNEUMONIA) change|: "
          f"{np.abs(results['fp32']['p'] - results['int8']['p']).max():.4f}; ROC-AUC change "
          f"{results['int8']['ROC-AUC'] - results['fp32']['ROC-AUC']:+.4f}")

    files, batch = test[:64], pixels[:32]
    timings = {name: (seconds_per_call(predictor.predict_image, files),
                      seconds_per_call(predictor.predict, [batch]) / len(batch)) for name, predictor in engines.items()}
    print(f"{'ms per image':<38}{'fp32':>10}{'int8':>10}{'speed-up':>10}")
    for index, label in enumerate(("from file (decode+preprocess+forward+guard)", "in a batch of 32 (forward+guard)")):
        fp32, int8 = timings["fp32"][index] * 1000, timings["int8"][index] * 1000
        print(f"{label:<38}{fp32:>10.2f}{int8:>10.2f}{fp32 / int8:>9.2f}x")
    sizes = {name: (folder / f"{name}.onnx").stat().st_size / 2**20 for name in engines}
    print(f"model file: fp32 {sizes['fp32']:.1f} MB, int8 {sizes['int8']:.1f} MB")


if __name__ == "__main__":
    main()
