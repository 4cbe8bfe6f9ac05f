"""Real and deliberately broken uploads for the app tests, made from the bundled X-rays."""

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage import data

from tests.conftest import sample_images


def grey_xray() -> np.ndarray:
    return np.asarray(Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L"))


def write_dicom(path: Path, stored: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 8,
                window: tuple[float, float] | None = None, **attributes) -> Path:
    """A minimal DX DICOM file; `stored=None` leaves out the pixel data; `attributes` adds tags (ViewPosition...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    if stored is not None:
        dataset.set_pixel_data(stored, photometric_interpretation=photometric, bits_stored=bits_stored)
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    dataset.save_as(path, enforce_file_format=True)
    return path


def with_lut(path: Path, sequence: str, table: np.ndarray, first_mapped: int = 0) -> Path:
    """The DICOM at `path` given a 16-bit lookup table as its `sequence` ("ModalityLUTSequence", or
    "VOILUTSequence", which readers prefer to a window)."""
    dataset = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.LUTDescriptor = [len(table), first_mapped, 16]
    item.add_new(0x00283006, "OW", table.astype("<u2").tobytes())  # LUT Data
    setattr(dataset, sequence, pydicom.Sequence([item]))
    dataset.save_as(path)
    return path


def dicom_variants(folder: Path) -> dict[str, Path]:
    """The same real X-ray as DICOM: 8/12/16-bit, MONOCHROME1/2, with and without a window."""
    grey = grey_xray().astype(np.uint16)
    return {
        "mono2_8bit": write_dicom(folder / "mono2_8.dcm", grey.astype(np.uint8)),
        "mono2_16bit": write_dicom(folder / "mono2_16.dcm", grey * 257, bits_stored=16),
        "mono1_8bit": write_dicom(folder / "mono1_8.dcm", (255 - grey).astype(np.uint8), "MONOCHROME1"),
        "mono1_12bit": write_dicom(folder / "mono1_12.dcm", 4095 - grey * 16, "MONOCHROME1", bits_stored=12),
        "mono2_12bit_window": write_dicom(folder / "mono2_12w.dcm", grey * 16, bits_stored=12, window=(2048, 4096)),
    }


def non_xray_files(folder: Path) -> dict[str, Path]:
    """Real images that are not chest X-rays, as files: a photograph (scikit-image's cat), a scanned document
    (its scanned page of text) and a CT slice (pydicom's CT_small.dcm, a real 128 x 128 CT image)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).save(folder / "photo_of_a_cat.jpeg", quality=90)
    Image.fromarray(data.page()).save(folder / "scanned_page.png")
    return {"photograph": folder / "photo_of_a_cat.jpeg", "scanned document": folder / "scanned_page.png",
            "CT slice": Path(shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct_slice.dcm"))}


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels (a decompression bomb) without the memory to build one."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def bad_uploads(folder: Path) -> dict[str, tuple[Path | None, str]]:
    """name → (file or None, a phrase its error message must contain)."""
    real = sample_images("test", "NORMAL", 1)[0].read_bytes()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a text file, not a picture\n")
    (folder / "document.png").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    (folder / "truncated.jpeg").write_bytes(real[: len(real) // 3])
    Image.new("L", (10, 10), 128).save(folder / "tiny.png")
    return {
        "no upload": (None, "No file was given"),
        "zero-byte file": (folder / "empty.png", "empty"),
        "text renamed .png": (folder / "text.png", "not an image"),
        "PDF renamed .png": (folder / "document.png", "not an image"),
        "truncated JPEG": (folder / "truncated.jpeg", "damaged or incomplete"),
        "DICOM without pixel data": (write_dicom(folder / "no_pixels.dcm", None), "no pixel data"),
        "30,000 x 30,000 PNG": (png_header_only(folder / "bomb.png", 30_000, 30_000), "too large"),
        "10 x 10 image": (folder / "tiny.png", "only 10x10 pixels"),
    }
