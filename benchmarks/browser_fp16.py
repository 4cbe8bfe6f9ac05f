"""Private mode's download: what storing the ONNX graph's weights in float16 would save and cost, in one run.

The page downloads `onnx/model.onnx` (float32, 60 MB for ResNet18 + the guard's whitening matrix). Stored as
float16 and cast back to float32 when the session loads (the computation stays float32), it would be half as
large. This measures that variant against the float32 graph that `trainer.push` pushes, both through ONNX
Runtime, on every test X-ray of a data folder and the 35 non-X-rays of benchmarks/ood_guard.py: size, largest
P(PNEUMONIA) difference, decisions and not-an-X-ray verdicts that agree, largest relative guard-distance change.

    python benchmarks/browser_fp16.py --model outputs/best --data_dir ../shared/data/chest_xray_224
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dataset_scripts.non_xray_images import non_xray_images  # noqa: E402
from serving import PneumoniaClassifier, read_image  # noqa: E402
from serving.browser_model import ONNX_FILE, browser_files  # noqa: E402


def float16_storage(graph_bytes: bytes, min_size: int = 1024) -> bytes:
    """The graph with every float32 initializer of at least `min_size` values stored as float16 + a Cast back."""
    model = onnx.load_from_string(graph_bytes)
    casts = []
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size >= min_size:
            name = initializer.name
            initializer.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}_float16"))
            casts.append(helper.make_node("Cast", [f"{name}_float16"], [name], to=TensorProto.FLOAT))
    for cast in reversed(casts):
        model.graph.node.insert(0, cast)
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A trained model folder (the run's best/).")
    parser.add_argument("--data_dir", required=True, help="A Kaggle-layout folder; its test/ images are used.")
    args = parser.parse_args()
    model = PneumoniaClassifier.from_pretrained(args.model)
    paths = sorted(p for p in (Path(args.data_dir) / "test").glob("*/*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    images = [read_image(p) for p in paths] + list(non_xray_images().values())
    inputs = [{"pixel_values": model.transform(image).unsqueeze(0).numpy()} for image in images]
    float32 = browser_files(model)[ONNX_FILE]
    float16 = float16_storage(float32)
    session32, session16 = onnxruntime.InferenceSession(float32), onnxruntime.InferenceSession(float16)
    reference = [session32.run(None, x) for x in inputs]
    answers = [session16.run(None, x) for x in inputs]
    probability = max(abs(a[0][0, 1] - r[0][0, 1]) for a, r in zip(answers, reference))
    decisions = sum(int(a[1][0] == r[1][0]) for a, r in zip(answers, reference))
    verdicts = sum(int(a[3][0] == r[3][0]) for a, r in zip(answers, reference))
    guard = max(abs(a[2][0] - r[2][0]) / r[2][0] for a, r in zip(answers, reference))
    print(f"{len(paths)} test X-rays + {len(images) - len(paths)} non-X-rays")
    print(f"{'weights stored as':20}{'MB':>8}{'max |dP|':>11}{'decisions':>12}{'verdicts':>11}{'max guard rel':>15}")
    print(f"{'float32 (pushed)':20}{len(float32) / 1e6:8.1f}{0:11.1e}{len(inputs):>12}{len(inputs):>11}{0:15.1e}")
    print(f"{'float16':20}{len(float16) / 1e6:8.1f}{probability:11.1e}{decisions:>12}{verdicts:>11}{guard:15.1e}")


if __name__ == "__main__":
    main()
