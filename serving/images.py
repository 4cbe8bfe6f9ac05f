"""The one image reader of every entry point (app, CLI, `PneumoniaClassifier.predict`): JPEG, PNG and other
bitmaps of any mode, or DICOM, into an RGB image; anything else gets an InputImageError saying what is wrong."""

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from .preprocessing import draft, to_rgb

BITMAP_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
ACCEPTED_SUFFIXES = BITMAP_SUFFIXES + DICOM_SUFFIXES
MAX_PIXELS = 50_000_000  # about 7,000 x 7,000: above any radiograph, below a decompression bomb
MIN_SIDE = 32
ACCEPTED = "a chest X-ray image (JPEG, PNG or DICOM)"
# The only DICOM attributes any entry point reports: where the image sits in the archive, and its view. Nothing that
# identifies the patient (name, birth date, IDs...) is read into a result.
DICOM_IDENTIFIERS = {"study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
                     "instance_uid": "SOPInstanceUID", "view_position": "ViewPosition"}
FRONTAL_VIEWS = {"PA", "AP"}  # DICOM ViewPosition of the views the model was trained on
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LATERAL", "LAT"}


class InputImageError(ValueError):
    """A file that cannot be used as an X-ray; the message says why, for the person who gave it."""


def decodes_alike(path: str | Path, size: tuple[int, int], other_size: tuple[int, int]) -> bool:
    """Whether `read_image(path, size)` and `read_image(path, other_size)` decode the same pixels: always, except for
    a JPEG large enough for Pillow's draft mode to pick a different reduced scale for the two sizes. Reads the
    header only (no pixels); anything Pillow cannot open (DICOM, broken files) has no draft mode."""
    def decoded_size(requested: tuple[int, int]) -> tuple[int, int]:
        with Image.open(path) as image:
            return draft(image, requested).size  # draft() only sets the scale: nothing is decoded

    try:
        return decoded_size(size) == decoded_size(other_size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return True


def has_dicom_preamble(path: Path) -> bool:
    """DICOM files carry "DICM" after a 128-byte preamble, whatever their name (PACS exports often have no suffix)."""
    with open(path, "rb") as file:
        return file.read(132)[128:132] == b"DICM"


def is_dicom(path: Path) -> bool:
    """A DICOM preamble, or at least a DICOM suffix."""
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)


def is_image_file(path: Path) -> bool:
    """What a folder walk reads: a file with an image suffix, or a DICOM without one (by its preamble)."""
    return path.suffix.lower() in ACCEPTED_SUFFIXES or has_dicom_preamble(path)


class ArchiveWalk:
    """The files named and everything under the folders named, in a stable order (each folder's files sorted, then
    its sub-folders), as (path, is an image file); walked afresh on each iteration, so that an archive of any size is
    streamed, never listed in memory. InputImageError naming a path that does not exist (a typo should stop the run,
    not become a CSV row)."""

    def __init__(self, inputs: list[str]):
        self.inputs = [Path(name) for name in inputs]
        if missing := [str(name) for name in self.inputs if not name.exists()]:
            raise InputImageError(f"No such file or folder: {', '.join(missing)}. Check the path.")

    def __iter__(self) -> Iterator[tuple[Path, bool]]:
        for name in self.inputs:
            if not name.is_dir():
                yield name, True
                continue
            for folder, subfolders, files in os.walk(name):
                subfolders.sort()
                for file in sorted(files):
                    yield Path(folder) / file, is_image_file(Path(folder) / file)

    def images(self) -> Iterator[Path]:
        return (path for path, is_image in self if is_image)


def dicom_identifiers(path: str | Path) -> dict[str, str]:
    """The archive identifiers of a DICOM file (DICOM_IDENTIFIERS; empty where a tag is missing), read without its
    pixels; {} for a file that is not DICOM."""
    path = Path(path)
    if not (path.is_file() and is_dicom(path)):
        return {}
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(DICOM_IDENTIFIERS.values()))
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return {}
    return {column: str(dataset.get(tag, "") or "") for column, tag in DICOM_IDENTIFIERS.items()}


def frontal_view(identifiers: dict[str, str]) -> str:
    """"True" for a PA/AP view, "False" for a lateral one (not what the model was trained on), "" when unknown."""
    view = identifiers.get("view_position", "").strip().upper()
    return "True" if view in FRONTAL_VIEWS else "False" if view in LATERAL_VIEWS else ""


def dicom_to_image(path: Path) -> Image.Image:
    """Render a DICOM as 8-bit grey: modality LUT, VOI LUT / window, MONOCHROME1 inverted."""
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise InputImageError(f"This DICOM file cannot be read ({error}).") from error
    if "PixelData" not in dataset:
        raise InputImageError("This DICOM file has no pixel data (no image inside).")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for unsupported transfer syntaxes
        raise InputImageError(f"The image in this DICOM file cannot be decoded ({error}).") from error
    if stored.ndim != 2:
        raise InputImageError(f"Expected one greyscale image in the DICOM file, found an array of shape {stored.shape}.")
    pixels = apply_modality_lut(stored, dataset)  # the stored integers, or float64 after a rescale
    has_window = "WindowCenter" in dataset or "VOILUTSequence" in dataset
    if has_window:  # a VOI LUT table is indexed by those integers; a window computes in float64
        pixels = apply_voi_lut(pixels, dataset, prefer_lut=True)
    pixels = pixels.astype(np.float64)
    # Scale by the range the pixels can take (bits stored), not their min/max, so grey levels mean the same.
    low, high = (0.0, float(2 ** int(dataset.BitsStored) - 1))
    if pixels.min() < low or pixels.max() > high:  # signed data or a rescale slope: fall back to the data's range
        low, high = float(pixels.min()), float(pixels.max())
    grey = (pixels - low) / max(high - low, 1.0) * 255.0
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        grey = 255.0 - grey  # MONOCHROME1: low values are white
    return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


def open_bitmap(path: Path, draft_size: tuple[int, int] | None = None, draft_mode: str | None = None) -> Image.Image:
    """The project's one way to decode a JPEG/PNG/... (serving, training's checks, the dataset scripts): oversized
    images refused before decoding, a large JPEG decoded at reduced scale (`draft_size`, in `draft_mode`, e.g. "L"
    for grey thumbnails); the image in its own mode, or InputImageError saying what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InputImageError(f"This image is {image.width}x{image.height} pixels, too large to process "
                                          f"(limit {MAX_PIXELS:,} pixels). Please use a smaller export.")
                draft(image, draft_size, draft_mode).load()
                return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputImageError(f"This image is too large to process ({error}).") from error
    except UnidentifiedImageError as error:
        raise InputImageError(f"This file is not an image we can read. Use {ACCEPTED}.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InputImageError(f"This image file is damaged or incomplete ({error}).") from error


def read_image(path: str | Path | None, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Return the file as an RGB image, or raise InputImageError saying what is wrong.

    With `draft_size` (the model's input size), a larger JPEG is decoded at reduced scale, at least that size.
    """
    if path is None or str(path) == "":
        raise InputImageError(f"No file was given. Choose {ACCEPTED}.")
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"No such file: {path}. Check the path.")
    if not path.is_file():
        raise InputImageError(f"{path} is a folder, not an image file.")
    if path.stat().st_size == 0:
        raise InputImageError(f"The file is empty (0 bytes). Choose {ACCEPTED}.")
    image = dicom_to_image(path) if is_dicom(path) else to_rgb(open_bitmap(path, draft_size))
    if min(image.size) < MIN_SIDE:
        raise InputImageError(f"This image is only {image.width}x{image.height} pixels; "
                              f"a chest X-ray needs at least {MIN_SIDE} pixels a side.")
    return image
