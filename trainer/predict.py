"""Batch prediction: stream image files through batched inference and write one CSV row per file.

    python -m trainer.predict --model outputs/best PATHS... --output preds.csv [--heatmaps DIR]

PATHS are image files or folders (searched recursively for JPEG, PNG, DICOM and other image files). Every
file is read, predicted and decided exactly as the app does (serving/predictor.py). A file that cannot
be read gets its error in the CSV instead of stopping the run; an image that does not look like a chest
X-ray (the model's guard) is flagged in `looks_like_chest_xray`. With --heatmaps, one PNG per image: the
Grad-CAM map of the decision over the image as the model sees it. Inference runs through ONNX Runtime
(serving/runtime.py) unless --eager. Research demo, not for clinical use.
"""

import argparse
import csv
import sys
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from serving.images import ACCEPTED_SUFFIXES, InputImageError
from serving.model import ModelNotFound, load_model
from serving.predictor import Prediction, Predictor


def image_paths(inputs: list[str]) -> list[Path]:
    """The files named, and every image file under the folders named, in a stable order; InputImageError
    naming a path that does not exist (a typo should stop the run, not become a CSV row)."""
    paths = []
    for name in map(Path, inputs):
        if not name.exists():
            raise InputImageError(f"No such file or folder: {name}. Check the path.")
        paths += sorted(p for p in name.rglob("*") if p.suffix.lower() in ACCEPTED_SUFFIXES) if name.is_dir() else [name]
    return paths


class ImageFiles(Dataset):
    """(index, pixel tensor or None, image as the model sees it or None, error) per path; decoding runs in workers."""

    def __init__(self, paths: list[Path], predictor: Predictor, keep_images: bool):
        self.paths, self.predictor, self.keep_images = paths, predictor, keep_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        model = self.predictor.model
        try:
            image = self.predictor.read(self.paths[index])
        except InputImageError as error:
            return index, None, None, str(error)
        shown = image.resize(model.input_size, Image.BILINEAR) if self.keep_images else None
        return index, model.transform(image), shown, ""


def collate(rows):
    readable = [row for row in rows if row[1] is not None]
    pixels = torch.stack([row[1] for row in readable]) if readable else None
    return [row[0] for row in readable], pixels, [row[2] for row in readable], [(row[0], row[3]) for row in rows
                                                                               if row[1] is None]


def prediction_row(path: Path, prediction: Prediction) -> dict:
    return {"path": str(path), "prediction": prediction.decision, **prediction.probabilities,
            "looks_like_chest_xray": prediction.looks_like_xray, "guard_distance": round(prediction.guard_distance, 3),
            "error": ""}


def predict_files(predictor: Predictor, paths: list[Path], batch_size: int, num_workers: int,
                  heatmap_dir: Path | None = None) -> list[dict]:
    """One result per path, in order: probabilities and decision, or the reason it could not be read.

    With `heatmap_dir`, each predicted image's Grad-CAM overlay is written there (column `heatmap`).
    """
    results = [None] * len(paths)
    loader = DataLoader(ImageFiles(paths, predictor, keep_images=heatmap_dir is not None), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    for indices, pixels, images, failures in tqdm(loader, desc="predict", unit="batch"):
        if pixels is not None:
            for index, image, prediction in zip(indices, images, predictor.predict(pixels, heatmaps=bool(heatmap_dir))):
                results[index] = prediction_row(paths[index], prediction)
                if heatmap_dir:
                    heatmap = heatmap_dir / f"{index:05d}_{paths[index].stem}.png"
                    prediction.overlay(image).save(heatmap)
                    results[index]["heatmap"] = str(heatmap)
        for index, message in failures:
            results[index] = {"path": str(paths[index]), "prediction": "", "error": message}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="Image files or folders.")
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer, or a Hub repo id.")
    parser.add_argument("--output", default="predictions.csv", help="CSV file to write.")
    parser.add_argument("--heatmaps", type=Path, default=None,
                        help="Folder for one Grad-CAM overlay PNG per image (created); none by default.")
    parser.add_argument("--batch_size", type=int, default=32, help="Images per forward pass.")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes for decoding.")
    parser.add_argument("--eager", action="store_true", help="Predict with eager PyTorch instead of ONNX Runtime.")
    args = parser.parse_args(argv)

    try:
        paths = image_paths(args.paths)
        model = load_model(args.model, onnxruntime=not args.eager)
    except (InputImageError, ModelNotFound) as error:
        sys.exit(f"error: {error}")
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
    rows = predict_files(model.predictor, paths, args.batch_size, args.num_workers, args.heatmaps)
    with open(args.output, "w", newline="") as file:
        columns = ["path", "prediction", *model.labels, "looks_like_chest_xray", "guard_distance", "error"]
        writer = csv.DictWriter(file, fieldnames=columns + ["heatmap"] * bool(args.heatmaps))
        writer.writeheader()
        writer.writerows(rows)
    failed = sum(bool(row["error"]) for row in rows)
    print(f"wrote {len(rows)} predictions to {args.output} (threshold {model.threshold:.3f}; {failed} unreadable)")


if __name__ == "__main__":
    main()
