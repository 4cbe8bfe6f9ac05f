"""In-process cost of one app request against the prediction alone, before and after the one-pass Grad-CAM.

On full-size X-ray stand-ins (real X-rays upscaled to Kaggle-original sizes, as benchmarks/full_resolution.py
makes them), one image after another, every path timed on the same image in turn (side by side):

- prediction alone: the served forward pass (ONNX Runtime) + calibration, decision and guard on a
  preprocessed image (`model.predictor.predict`);
- app request, after: `serving.demo.diagnose`, what the app runs per upload (read + preprocess + predict
  + guard + Grad-CAM from the forward's own feature map + overlay);
- app request, before: the same read and prediction, then Grad-CAM as the app ran it until now
  (pytorch-grad-cam's hooks on the shared model: a second, eager forward and backward through the backbone)
  and its overlay.

    python benchmarks/serving_cost.py --model outputs/best
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from full_resolution import full_size_stand_ins
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.demo import diagnose  # noqa: E402
from serving.model import load_model  # noqa: E402


def before(model, path):
    """The app's request until this change: prediction, then pytorch-grad-cam through hooks on the model."""
    image = model.predictor.read(path)
    prediction = model.predictor.predict_image(image)
    pixel_values = model.transform(image).unsqueeze(0).requires_grad_(True)
    with GradCAM(model=model, target_layers=[model.backbone.layer4]) as cam:
        heatmap = cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(model.labels.index(prediction.decision))])[0]
    shown = np.asarray(image.resize(heatmap.shape[::-1], Image.BILINEAR), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(shown, heatmap, use_rgb=True, image_weight=0.6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer, or a Hub repo id.")
    parser.add_argument("--images", type=int, default=30, help="Full-size stand-ins to make and time.")
    parser.add_argument("--repeats", type=int, default=3, help="Passes over the images.")
    args = parser.parse_args()
    model = load_model(args.model)
    paths = {
        "read (decode + draft)": lambda path: model.predictor.read(path),
        "prediction alone (forward + guard)": None,
        "app request, before (pytorch-grad-cam hooks)": lambda path: before(model, path),
        "app request, after (one-pass Grad-CAM)": lambda path: diagnose(model, path),
    }
    times = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as folder:
        images = full_size_stand_ins(Path(folder), args.images)
        for path in images[:3]:  # warm-up
            for name, run in paths.items():
                run and run(path)
        for _ in range(args.repeats):
            for path in images:
                pixels = model.transform(model.predictor.read(path)).unsqueeze(0)
                for name, run in paths.items():
                    started = time.perf_counter()
                    model.predictor.predict(pixels) if run is None else run(path)
                    times[name].append(time.perf_counter() - started)
    median = {name: 1000 * statistics.median(values) for name, values in times.items()}
    alone = median["prediction alone (forward + guard)"]
    print(f"{args.images} full-size X-ray stand-ins x {args.repeats}, engine {model.predictor.engine}")
    print(f"{'path':<48}{'median ms':>10}{'vs prediction':>15}")
    for name, value in median.items():
        print(f"{name:<48}{value:>10.1f}{value / alone:>14.2f}x")
    after, old = median["app request, after (one-pass Grad-CAM)"], median["app request, before (pytorch-grad-cam hooks)"]
    print(f"app request / prediction alone: before {old / alone:.2f}x, after {after / alone:.2f}x (target <= 1.5x); "
          f"the request is {old / after:.2f}x faster")


if __name__ == "__main__":
    main()
