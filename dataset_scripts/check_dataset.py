"""Check a downloaded Kaggle "Chest X-Ray Images (Pneumonia)" folder before training on it.

Reports the layout, image counts and patients per split and class, every file that cannot be decoded, and the
same radiograph in two splits (near-duplicate images across train/ and test/, which would leak test images into
training); exits non-zero when the folder is not usable.

    python -m dataset_scripts.check_dataset path/to/chest_xray
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from serving.images import open_bitmap
from serving.labels import LABELS
from trainer.data import (
    SPLIT_FOLDERS,
    DatasetLayoutError,
    check_layout,
    class_images,
    is_readable,
    patient_id,
)

# Near-duplicates: candidates whose perceptual hashes (imagehash.phash, 64 bits) differ in at most HASH_BITS bits,
# confirmed when their 64x64 greyscale thumbnails differ by at most PIXEL_LEVELS grey levels on average. On the
# full data the pHash alone is not enough (different children's radiographs at 2 bits), while pixel differences
# split cleanly: copies of one image differ by 0.0 levels, two different radiographs by 11.9 or more.
HASH_BITS = 8
PIXEL_LEVELS = 4.0
THUMBNAIL = (64, 64)
METHOD = (f"perceptual hash (imagehash.phash, 64 bits) within {HASH_BITS} bits, confirmed by a mean absolute "
          f"difference of at most {PIXEL_LEVELS:g} grey levels between 64x64 greyscale thumbnails")


def summarise(data_dir: Path) -> list[dict]:
    """One row per split and class: images, patients and unreadable files."""
    rows = []
    for split in SPLIT_FOLDERS:
        for class_name in LABELS:
            paths = class_images(data_dir / split / class_name)
            rows.append({"split": split, "class": class_name, "images": len(paths),
                         "patients": len({patient_id(p.name) for p in paths}),
                         "unreadable": [str(p) for p in paths if not is_readable(p)]})
    return rows


def greyscale(path: Path, size: tuple[int, int]) -> Image.Image:
    """The image in grey, decoded at reduced scale where JPEG allows (the hash and thumbnail are small)."""
    return open_bitmap(path, size, "L").convert("L")


def perceptual_hash(path: Path) -> int:
    return int(str(imagehash.phash(greyscale(path, (32, 32)))), 16)


def thumbnail(path: Path) -> np.ndarray:
    return np.asarray(greyscale(path, THUMBNAIL).resize(THUMBNAIL, Image.BILINEAR), dtype=np.float32)


@dataclass
class DuplicateCheck:
    """Near-duplicate pairs between two sets of images, and how alike same-patient-number pairs are."""
    pairs: list[tuple[str, str, int, float]]  # (first, second, hash bits apart, mean grey-level difference)
    same_number_pairs: int  # pairs whose file names carry the same patient number
    same_number_bits: float  # their mean pHash distance...
    all_pairs_bits: float  # ...and that of all pairs, for comparison

    def lines(self, between: str) -> list[str]:
        found = [f"  {a} ~ {b} ({bits} bits, {levels:.1f} grey levels)" for a, b, bits, levels in self.pairs]
        return [f"near-duplicates between {between}: {len(self.pairs)} ({METHOD})", *found, f"  {self.numbering()}"]

    def numbering(self) -> str:
        """Whether images whose file names share a patient number are more alike than any two images."""
        if not self.same_number_pairs:
            return "no pair of images shares a patient number"
        alike = ("no more alike than any two images: the numbering alone shows no leak"
                 if self.same_number_bits >= self.all_pairs_bits - 1 else "more alike than any two images: inspect them")
        return (f"{self.same_number_pairs} pair(s) of images share a patient number; their mean pHash distance, "
                f"{self.same_number_bits:.1f} bits (all pairs: {self.all_pairs_bits:.1f}), is {alike}")


def near_duplicates(first: list[Path], second: list[Path] | None = None) -> DuplicateCheck:
    """Near-duplicate pairs between `first` and `second`, or within `first` when `second` is None."""
    hashes_first = np.array([perceptual_hash(p) for p in first], dtype=np.uint64)
    hashes_second = hashes_first if second is None else np.array([perceptual_hash(p) for p in second], dtype=np.uint64)
    second = first if second is None else second
    bits = np.bitwise_count(hashes_first[:, None] ^ hashes_second[None, :])
    considered = np.ones_like(bits, dtype=bool) if second is not first else np.triu(np.ones_like(bits, dtype=bool), 1)
    pairs = []
    for i, j in np.argwhere(considered & (bits <= HASH_BITS)):
        levels = float(np.abs(thumbnail(first[i]) - thumbnail(second[j])).mean())
        if levels <= PIXEL_LEVELS:
            pairs.append((str(first[i]), str(second[j]), int(bits[i, j]), levels))
    numbers = np.array([patient_id(p.name) for p in first])[:, None] == np.array([patient_id(p.name) for p in second])
    numbers &= considered
    return DuplicateCheck(pairs, int(numbers.sum()), float(bits[numbers].mean()) if numbers.any() else 0.0,
                          float(bits[considered].mean()))


def split_images(data_dir: Path, split: str) -> list[Path]:
    return [path for class_name in LABELS for path in class_images(data_dir / split / class_name)]


def cross_split_duplicates(data_dir: Path) -> DuplicateCheck:
    """The same radiograph in train/ and test/ (readable images only)."""
    train, test = ([p for p in split_images(data_dir, split) if is_readable(p)] for split in SPLIT_FOLDERS)
    return near_duplicates(train, test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="Folder holding train/ and test/.")
    args = parser.parse_args(argv)
    try:
        check_layout(args.data_dir)
    except DatasetLayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = summarise(args.data_dir)
    print(f"{'split':<7}{'class':<11}{'images':>8}{'patients':>10}{'unreadable':>12}")
    for row in rows:
        print(f"{row['split']:<7}{row['class']:<11}{row['images']:>8}{row['patients']:>10}{len(row['unreadable']):>12}")
    duplicates = cross_split_duplicates(args.data_dir)
    print("\n".join(duplicates.lines("train/ and test/")))
    unreadable = [path for row in rows for path in row["unreadable"]]
    for path in unreadable:
        print(f"unreadable: {path}", file=sys.stderr)
    problems = [f"{len(unreadable)} unreadable file(s): delete or replace them"] if unreadable else []
    if duplicates.pairs:
        problems.append(f"{len(duplicates.pairs)} test image(s) also in train/: remove one copy of each")
    print("OK" if not problems else "; ".join(problems) + ".")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
