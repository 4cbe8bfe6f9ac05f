"""Many files at once, for `python -m trainer.predict` and the Space's "Screen a folder" tab: one row per file,
the same columns in both. A file that cannot be read gets its error in its row; the others still get results."""

import csv
import zipfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .images import ACCEPTED_SUFFIXES, InputImageError, image_files
from .predictor import Prediction, Predictor

MAX_FILES = 500  # per screening request in the Space
MAX_UNZIPPED_BYTES = 1024 * 2**20  # what the archives of one request may expand to
ENCRYPTED = 0x1  # bit 0 of a .zip member's general purpose flags (PKWARE APPNOTE 4.4.4)
UNPACKABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}  # what zipfile can read


def csv_columns(labels: list[str], heatmaps: bool = False) -> list[str]:
    """The results' columns: `prediction` is the answer (a class, or NOT_A_CHEST_XRAY), then P of each class."""
    return ["path", "prediction", *labels, "looks_like_chest_xray", "guard_distance", "error", *["heatmap"] * heatmaps]


def image_paths(inputs: list[str]) -> list[Path]:
    """The files named, and every image file under the folders named, in a stable order; InputImageError
    naming a path that does not exist (a typo should stop the run, not become a CSV row)."""
    paths = []
    for name in map(Path, inputs):
        if not name.exists():
            raise InputImageError(f"No such file or folder: {name}. Check the path.")
        paths += image_files(name) if name.is_dir() else [name]
    return paths


def unzip_images(archive: Path, folder: Path) -> list[tuple[str, Path]]:
    """(name inside the archive, extracted file) for each image file of a .zip; InputImageError if it is not one."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [m for m in opened.infolist() if not m.is_dir() and Path(m.filename).suffix.lower()
                       in ACCEPTED_SUFFIXES and not Path(m.filename).name.startswith(".")
                       and "__MACOSX" not in m.filename]
            if any(member.flag_bits & ENCRYPTED for member in members):
                raise InputImageError(f"{archive.name} is password-protected, and the app cannot open encrypted "
                                      "archives. Zip the images again without a password, or choose the image files "
                                      "themselves.")
            if unreadable := [m for m in members if m.compress_type not in UNPACKABLE]:
                method = zipfile.compressor_names.get(unreadable[0].compress_type, "an unknown method")
                raise InputImageError(f"{archive.name} compresses {unreadable[0].filename} with {method}, which the "
                                      "app cannot unpack. Zip the images again with ordinary (Deflate) compression, "
                                      "or choose the image files themselves.")
            unzipped = sum(member.file_size for member in members)
            if unzipped > MAX_UNZIPPED_BYTES:
                raise InputImageError(f"{archive.name} expands to {unzipped / 2**20:.0f} MB, more than the "
                                      f"{MAX_UNZIPPED_BYTES / 2**20:.0f} MB limit. Split it into smaller archives.")
            # extract() keeps every member inside `folder` ("../" dropped) and returns where it wrote it
            return [(f"{archive.name}/{member.filename}", Path(opened.extract(member, folder))) for member in members]
    except zipfile.BadZipFile as error:
        raise InputImageError(f"{archive.name} is not a readable .zip archive ({error}).") from error


def screening_files(uploads: list[str], folder: Path) -> list[tuple[str, Path]]:
    """(name to report, file) for each upload, the images inside .zip archives unpacked into `folder`;
    InputImageError when there is nothing to screen or more than MAX_FILES files."""
    files = []
    for number, upload in enumerate(map(Path, uploads or [])):
        if upload.suffix.lower() == ".zip":
            files += unzip_images(upload, folder / str(number))
        else:
            files.append((upload.name, upload))
    if not files:
        raise InputImageError("No images to screen: choose X-ray files (JPEG, PNG or DICOM) or a .zip of them.")
    if len(files) > MAX_FILES:
        raise InputImageError(f"{len(files)} images: one screening takes at most {MAX_FILES}. "
                              "Split the folder, or run `python -m trainer.predict` on it locally.")
    return files


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
    """An image the guard refuses gets NOT_A_CHEST_XRAY and no probabilities, as the Space gives it no diagnosis."""
    probabilities = prediction.probabilities if prediction.looks_like_xray else {}
    return {"path": str(path), "prediction": prediction.decision, **probabilities,
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
                if heatmap_dir and prediction.heatmap is not None:
                    heatmap = heatmap_dir / f"{index:05d}_{paths[index].stem}.png"
                    prediction.overlay(image).save(heatmap)
                    results[index]["heatmap"] = str(heatmap)
        for index, message in failures:
            results[index] = {"path": str(paths[index]), "prediction": "", "error": message}
    return results


def write_csv(rows: list[dict], labels: list[str], path: Path) -> Path:
    """The rows as CSV with `csv_columns` (and `heatmap` when a row has one); missing values are left empty."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=csv_columns(labels, heatmaps=any("heatmap" in row for row in rows)))
        writer.writeheader()
        writer.writerows(rows)
    return path
