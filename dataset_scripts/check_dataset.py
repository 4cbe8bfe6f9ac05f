"""Check a downloaded Kaggle "Chest X-Ray Images (Pneumonia)" folder before training on it.

Reports the layout, image counts and patients per split and class, and every file that cannot be
decoded; exits non-zero when the folder is not usable.

    python -m dataset_scripts.check_dataset path/to/chest_xray
"""

import argparse
import sys
from pathlib import Path

from serving.labels import LABELS
from trainer.data import (
    SPLIT_FOLDERS,
    DatasetLayoutError,
    check_layout,
    class_images,
    is_readable,
    patient_id,
)


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
    unreadable = [path for row in rows for path in row["unreadable"]]
    for path in unreadable:
        print(f"unreadable: {path}", file=sys.stderr)
    print("OK" if not unreadable else f"{len(unreadable)} unreadable file(s): delete or replace them.")
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
