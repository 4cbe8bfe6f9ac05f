"""Resize a full-resolution Kaggle-layout folder once, to the model's input size, for fast repeated training.

Every image of train/ and test/ is decoded (large JPEGs at reduced scale, as in training), squashed to
SIZE x SIZE with the model's own bicubic resize and written as a quality-95 JPEG with the same name and
grey/colour mode, so the copy is what the preprocessing would produce on the fly. Unreadable files are
listed and skipped; the source is never modified. `benchmarks/full_resolution.py` measures when this
pays off compared with decoding the originals in draft mode every time.

    python -m dataset_scripts.resize_dataset path/to/chest_xray path/to/chest_xray_224
"""

import argparse
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from serving.images import InputImageError, open_bitmap
from serving.labels import LABELS
from serving.preprocessing import to_rgb
from trainer.data import SPLIT_FOLDERS, check_layout, class_images


def resize_image(source: Path, destination: Path, size: int) -> None:
    try:
        image = open_bitmap(source, (size, size))
    except InputImageError as error:
        raise InputImageError(f"Cannot read image {source}: {error}") from error
    kept = image if image.mode in ("L", "RGB") else to_rgb(image)  # JPEG holds 8-bit grey or RGB
    resized = kept.resize((size, size), Image.BICUBIC)
    resized.save(destination.with_suffix(".jpeg"), quality=95)


def resize_folder(source: Path, destination: Path, size: int) -> list[str]:
    """Write the resized copy; return the source files that could not be read."""
    check_layout(source)
    unreadable = []
    for split in SPLIT_FOLDERS:
        for class_name in LABELS:
            (destination / split / class_name).mkdir(parents=True, exist_ok=True)
            for path in tqdm(class_images(source / split / class_name), desc=f"{split}/{class_name}"):
                try:
                    resize_image(path, destination / split / class_name / path.name, size)
                except InputImageError as error:
                    unreadable.append(str(error))
    return unreadable


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="Kaggle-layout folder with train/ and test/.")
    parser.add_argument("destination", type=Path, help="Where to write the resized copy (created).")
    parser.add_argument("--size", type=int, default=224, help="Side in pixels (the model's input size).")
    args = parser.parse_args(argv)
    if args.destination.resolve() == args.source.resolve():
        parser.error("destination must differ from source: the originals are never overwritten")
    unreadable = resize_folder(args.source, args.destination, args.size)
    print(f"resized copy in {args.destination}; {len(unreadable)} unreadable file(s) skipped")
    for message in unreadable:
        print(f"  {message}")


if __name__ == "__main__":
    main()
