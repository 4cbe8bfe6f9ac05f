"""In-process cost of one Space request against the prediction alone, and what decoding the upload once changes.

On full-size X-ray stand-ins (real X-rays upscaled to Kaggle-original sizes, as benchmarks/full_resolution.py
makes them), one image after another, every path timed on the same image in turn (side by side):

- prediction alone: the served forward pass (ONNX Runtime) + calibration, decision and guard on a
  preprocessed image (`Predictor.predict`);
- Space request, adopted: `serving.upload.diagnose`, what the app runs per upload (the file decoded once at
  display size, plus a coarse draft decode for the model when it is a large JPEG; preprocess + predict + guard +
  Grad-CAM from the forward's own feature map);
- Space request, two decodes (before): the upload decoded for the model (drafted to its input size) and again
  for the display, as the app did until issue 28;
- Space request with pytorch-grad-cam's hooks (before the one-pass Grad-CAM): a second, eager forward and backward.

The same images are timed as JPEGs and as PNGs (which have no draft mode: one decode serves both). It also prints
how far the Space's answers lie from `trainer.predict`'s for the same files (largest |dP(PNEUMONIA)|, differing
answers): zero is the target, one answer everywhere. A measured alternative that decoded every upload once, at
display size, also for large JPEGs, was 0.87x as fast (the model's resize then starts from the full image) and
moved P(PNEUMONIA) by up to 0.04 from the CLI's: not adopted.

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

from serving.loading import add_model_argument, load_model  # noqa: E402
from serving.predictor import Predictor  # noqa: E402
from serving.upload import diagnose, radiograph  # noqa: E402


def two_decodes(predictor: Predictor, path):
    """The Space's request until issue 28: the upload decoded for the model, then again for the display."""
    prediction = predictor.analyse(predictor.read(path), heatmap=True)
    return prediction, radiograph(path)


def hooks(predictor: Predictor, path):
    """The Space's request before the one-pass Grad-CAM: pytorch-grad-cam through hooks on the model."""
    model, image = predictor.model, predictor.read(path)
    prediction = predictor.analyse(image)
    pixel_values = model.transform(image).unsqueeze(0).requires_grad_(True)
    with GradCAM(model=model, target_layers=[model.backbone.layer4]) as cam:
        decided = model.labels.index(predictor.decide(prediction.probabilities["PNEUMONIA"]))
        heatmap = cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(decided)])[0]
    shown = np.asarray(image.resize(heatmap.shape[::-1], Image.BILINEAR), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(shown, heatmap, use_rgb=True, image_weight=0.6))


def answer_differences(predictor: Predictor, images: list[Path]) -> tuple[float, int, int]:
    """Largest |dP(PNEUMONIA)| between the Space's answer and the CLI's for the same files, differing answers, and
    images the Space refuses as not chest X-rays."""
    largest, differing, refused = 0.0, 0, 0
    for path in images:
        space, _, _ = diagnose(predictor, path)
        cli = predictor.analyse(path)
        if space is not None:
            largest = max(largest, abs(space.probabilities["PNEUMONIA"] - cli.probabilities["PNEUMONIA"]))
        differing += (space.decision if space is not None else "NOT_A_CHEST_XRAY") != cli.decision
        refused += space is None
    return largest, differing, refused


def median_times(predictor: Predictor, paths: dict, images: list[Path], repeats: int) -> dict[str, float]:
    """Median ms per image of each path, all paths timed on the same image in turn."""
    times = {name: [] for name in paths}
    for path in images[:3]:  # warm-up
        for run in paths.values():
            run and run(path)
    for _ in range(repeats):
        for path in images:
            pixels = predictor.model.transform(predictor.read(path)).unsqueeze(0)
            for name, run in paths.items():
                started = time.perf_counter()
                predictor.predict(pixels) if run is None else run(path)
                times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--images", type=int, default=30, help="Full-size stand-ins to make and time.")
    parser.add_argument("--repeats", type=int, default=3, help="Passes over the images.")
    args = parser.parse_args()
    predictor = Predictor(load_model(args.model))
    paths = {
        "read for the model (decode + draft)": predictor.read,
        "prediction alone (forward + guard)": None,
        "Space request, pytorch-grad-cam hooks": lambda path: hooks(predictor, path),
        "Space request, two decodes (before)": lambda path: two_decodes(predictor, path),
        "Space request, adopted": lambda path: diagnose(predictor, path),
    }
    with tempfile.TemporaryDirectory() as folder:
        jpegs = full_size_stand_ins(Path(folder), args.images)
        for path in jpegs:
            Image.open(path).save(path.with_suffix(".png"))
        for kind, images in (("JPEG", jpegs), ("PNG", [path.with_suffix(".png") for path in jpegs])):
            median = median_times(predictor, paths, images, args.repeats)
            alone = median["prediction alone (forward + guard)"]
            print(f"{args.images} full-size X-ray stand-ins as {kind} x {args.repeats}, engine {predictor.engine}")
            print(f"{'path':<48}{'median ms':>10}{'vs prediction':>15}")
            for name, value in median.items():
                print(f"{name:<48}{value:>10.1f}{value / alone:>14.2f}x")
            adopted, before = median["Space request, adopted"], median["Space request, two decodes (before)"]
            largest, differing, refused = answer_differences(predictor, images)
            print(f"adopted vs two decodes: the request is {before / adopted:.2f}x as fast; Space vs trainer.predict: "
                  f"largest |dP(PNEUMONIA)| {largest:.1e}, {differing}/{len(images)} answers differ "
                  f"({refused} refused as not chest X-rays by both)\n")


if __name__ == "__main__":
    main()
