"""Many files at once, for `python -m trainer.predict` and the Space's "Screen a folder" tab: one row per file,
the same columns in both. A file that cannot be read gets its error in its row; the others still get results."""

import csv
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from .images import ACCEPTED_SUFFIXES, DICOM_IDENTIFIERS, InputImageError, dicom_identifiers, frontal_view
from .predictor import Prediction, Predictor

MAX_FILES = 500  # per screening request in the Space
MAX_UNZIPPED_BYTES = 1024 * 2**20  # what the archives of one request may expand to
ENCRYPTED = 0x1  # bit 0 of a .zip member's general purpose flags (PKWARE APPNOTE 4.4.4)
UNPACKABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}  # what zipfile can read


def csv_columns(labels: list[str], heatmaps: bool = False) -> list[str]:
    """The results' columns: `prediction` is the answer (a class, or NOT_A_CHEST_XRAY), then P of each class; for
    DICOM files their archive identifiers and whether the view is frontal (empty for other files)."""
    return ["path", "prediction", *labels, "looks_like_chest_xray", "guard_distance", "error", *DICOM_IDENTIFIERS,
            "frontal_view", *["heatmap"] * heatmaps]


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


class ImageStream(IterableDataset):
    """An Item per (index, source) of `files` (any re-iterable, e.g. a list or a walk of an archive), read lazily and
    split between DataLoader workers. A source is a file's path, or an object whose `local_copy()` gives a temporary
    file (an instance in a PACS, trainer/pacs.py)."""

    def __init__(self, files: Iterable[tuple[int, Path]], predictor: Predictor, keep_images: bool):
        self.files, self.predictor, self.keep_images = files, predictor, keep_images

    def __len__(self) -> int:
        """The number of files when `files` knows it (a list: progress bars show a total); TypeError for a stream."""
        return len(self.files)

    def __iter__(self) -> Iterator["Item"]:
        worker = get_worker_info()
        for position, (index, source) in enumerate(self.files):
            if worker is None or position % worker.num_workers == worker.id:
                yield self.load(index, source)

    def load(self, index: int, source) -> "Item":
        if not hasattr(source, "local_copy"):
            return self.read(index, Path(source), Path(source))
        try:
            with source.local_copy() as path:
                return self.read(index, source, path)
        except InputImageError as error:
            return Item(index, source, {}, error=str(error))

    def read(self, index: int, source, path: Path) -> "Item":
        model = self.predictor.model
        identifiers = dicom_identifiers(path)
        try:
            image = self.predictor.read(path)
        except InputImageError as error:
            return Item(index, source, identifiers, error=str(error))
        shown = image.resize(model.input_size, Image.BILINEAR) if self.keep_images else None
        return Item(index, source, identifiers, model.transform(image), shown)


@dataclass
class Item:
    """One file as a DataLoader worker read it: its pixels for the model, or the reason it could not be read."""

    index: int  # the file's number in the run (names its heatmap)
    path: Path  # or the PACS instance it came from (its str() is the WADO-RS URL)
    identifiers: dict[str, str]  # DICOM archive identifiers, {} for other files
    pixels: torch.Tensor | None = None
    shown: Image.Image | None = None  # the image as the model sees it, for heatmaps
    error: str = ""


def collate(items: list[Item]) -> tuple[list[Item], torch.Tensor | None, list[Item]]:
    """(readable items, their stacked pixels or None, unreadable items)."""
    readable = [item for item in items if item.pixels is not None]
    pixels = torch.stack([item.pixels for item in readable]) if readable else None
    return readable, pixels, [item for item in items if item.pixels is None]


def dicom_columns(identifiers: dict[str, str]) -> dict[str, str]:
    return {**identifiers, "frontal_view": frontal_view(identifiers)} if identifiers else {}


def prediction_row(item: Item, prediction: Prediction) -> dict:
    """An image the guard refuses gets NOT_A_CHEST_XRAY and no probabilities, as the Space gives it no diagnosis."""
    probabilities = prediction.probabilities if prediction.looks_like_xray else {}
    return {"path": str(item.path), "prediction": prediction.decision, **probabilities,
            "looks_like_chest_xray": prediction.looks_like_xray, "guard_distance": round(prediction.guard_distance, 3),
            "error": "", **dicom_columns(item.identifiers)}


def predict_stream(predictor: Predictor, files: Iterable[tuple[int, Path]], batch_size: int, num_workers: int,
                   heatmap_dir: Path | None = None) -> Iterator[list[tuple[int, dict]]]:
    """(index, result row) of each (index, path) of `files`, a batch at a time as they are made (in no fixed order
    across DataLoader workers): probabilities and decision, or the reason the file could not be read. With
    `heatmap_dir`, each chest X-ray's Grad-CAM overlay is written there (column `heatmap`)."""
    loader = DataLoader(ImageStream(files, predictor, keep_images=heatmap_dir is not None), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate)
    for readable, pixels, unreadable in tqdm(loader, desc="predict", unit="batch"):
        rows = [(item.index, {"path": str(item.path), "prediction": "", "error": item.error,
                              **dicom_columns(item.identifiers)}) for item in unreadable]
        predictions = predictor.predict(pixels, heatmaps=bool(heatmap_dir)) if pixels is not None else []
        for item, prediction in zip(readable, predictions):
            row = prediction_row(item, prediction)
            if heatmap_dir and prediction.heatmap is not None:
                row["heatmap"] = str(heatmap_dir / f"{item.index:05d}_{item.path.stem}.png")
                prediction.overlay(item.shown).save(row["heatmap"])
            rows.append((item.index, row))
        yield rows


def predict_files(predictor: Predictor, paths: list[Path], batch_size: int, num_workers: int,
                  heatmap_dir: Path | None = None) -> list[dict]:
    """One result row per path, in order (`predict_stream` collected)."""
    results = [None] * len(paths)
    for rows in predict_stream(predictor, list(enumerate(paths)), batch_size, num_workers, heatmap_dir):
        for index, row in rows:
            results[index] = row
    return results


def write_csv(rows: list[dict], labels: list[str], path: Path) -> Path:
    """The rows as CSV with `csv_columns` (and `heatmap` when a row has one); missing values are left empty."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=csv_columns(labels, heatmaps=any("heatmap" in row for row in rows)))
        writer.writeheader()
        writer.writerows(rows)
    return path
