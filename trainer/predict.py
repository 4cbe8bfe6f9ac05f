"""Batch prediction: stream image files through batched inference and write one CSV row per file.

    python -m trainer.predict --model outputs/best PATHS... --output preds.csv

PATHS are image files or folders (searched recursively for JPEG, PNG and DICOM files). A file that
cannot be read gets its error in the CSV instead of stopping the run; an image that does not look like a
chest X-ray (the model's guard) is flagged in `looks_like_chest_xray`. Inference runs through ONNX
Runtime (trainer/runtime.py) unless --eager. Research demo, not for clinical use.
"""

import argparse
import csv
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .inputs import InputImageError, read_upload
from .model import PneumoniaClassifier

SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm"}


def image_paths(inputs: list[str]) -> list[Path]:
    """The files named, and every image file under the folders named, in a stable order."""
    paths = []
    for name in map(Path, inputs):
        paths += sorted(p for p in name.rglob("*") if p.suffix.lower() in SUFFIXES) if name.is_dir() else [name]
    return paths


class ImageFiles(Dataset):
    """(index, pixel tensor or None, error message) for each path; decoding runs in DataLoader workers."""

    def __init__(self, paths: list[Path], transform, input_size: tuple[int, int]):
        self.paths, self.transform, self.input_size = paths, transform, input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(read_upload(self.paths[index], self.input_size)), ""
        except InputImageError as error:
            return index, None, str(error)


def collate(rows):
    readable = [row for row in rows if row[1] is not None]
    pixels = torch.stack([row[1] for row in readable]) if readable else None
    return [row[0] for row in readable], pixels, [(row[0], row[2]) for row in rows if row[1] is None]


def prediction_row(model: PneumoniaClassifier, path: Path, probabilities: dict, distance: float) -> dict:
    return {"path": str(path), "prediction": model.decide(probabilities), **probabilities,
            "looks_like_chest_xray": model.looks_like_xray(distance), "guard_distance": round(distance, 3), "error": ""}


@torch.inference_mode()
def predict_files(model: PneumoniaClassifier, paths: list[Path], batch_size: int, num_workers: int) -> list[dict]:
    """One result per path, in order: probabilities and decision, or the reason it could not be read."""
    model.eval()
    results = [None] * len(paths)
    loader = DataLoader(ImageFiles(paths, model.transform, model.input_size), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate)
    for indices, pixels, failures in tqdm(loader, desc="predict", unit="batch"):
        if pixels is not None:
            logits, distances = model.logits_and_guard_distances(pixels)
            for index, p, distance in zip(indices, model.probabilities(logits), distances):
                results[index] = prediction_row(model, paths[index], dict(zip(model.labels, p.tolist())), float(distance))
        for index, message in failures:
            results[index] = {"path": str(paths[index]), "prediction": "", "error": message}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="Image files or folders.")
    parser.add_argument("--model", default="outputs/best", help="Folder saved by the trainer, or a Hub repo id.")
    parser.add_argument("--output", default="predictions.csv", help="CSV file to write.")
    parser.add_argument("--batch_size", type=int, default=32, help="Images per forward pass.")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes for decoding.")
    parser.add_argument("--eager", action="store_true", help="Predict with eager PyTorch instead of ONNX Runtime.")
    args = parser.parse_args(argv)

    model = PneumoniaClassifier.from_pretrained(args.model)
    if not args.eager:
        model.use_onnxruntime()
    rows = predict_files(model, image_paths(args.paths), args.batch_size, args.num_workers)
    with open(args.output, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["path", "prediction", *model.labels, "looks_like_chest_xray",
                                                  "guard_distance", "error"])
        writer.writeheader()
        writer.writerows(rows)
    failed = sum(bool(row["error"]) for row in rows)
    print(f"wrote {len(rows)} predictions to {args.output} (threshold {model.threshold:.3f}; {failed} unreadable)")


if __name__ == "__main__":
    main()
