"""Build the small real sample bundled in `sample_data/chest_xray/` from a full Kaggle-layout folder.

Whole patients are drawn at random (seeded) until each split/class has its quota of images, so the
sample keeps the multi-image patients that the grouped validation split must handle.

    python -m dataset_scripts.make_sample ../shared/data/chest_xray_224 sample_data/chest_xray
"""

import argparse
import random
import shutil
from collections import defaultdict
from pathlib import Path

from serving.labels import LABELS
from trainer.data import patient_id
from trainer.options import SeedOption, add_options

QUOTAS = {"train": {"NORMAL": 100, "PNEUMONIA": 200}, "test": {"NORMAL": 40, "PNEUMONIA": 60}}


def sample_patients(class_dir: Path, quota: int, rng: random.Random) -> list[Path]:
    """Return the images of randomly chosen whole patients, stopping once `quota` is reached."""
    by_patient = defaultdict(list)
    for path in sorted(class_dir.glob("*.jpeg")):
        by_patient[patient_id(path.name)].append(path)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    chosen = []
    for patient in patients:
        if len(chosen) >= quota:
            break
        chosen.extend(by_patient[patient])
    return chosen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="Kaggle-layout folder with train/ and test/.")
    parser.add_argument("destination", type=Path, help="Where to write the sample (replaced).")
    add_options(parser, SeedOption)  # the bundled sample was drawn with --seed 0 (sample_data/README.md)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    shutil.rmtree(args.destination, ignore_errors=True)
    for split, quotas in QUOTAS.items():
        for class_name in LABELS:
            target = args.destination / split / class_name
            target.mkdir(parents=True)
            images = sample_patients(args.source / split / class_name, quotas[class_name], rng)
            for image in images:
                shutil.copy2(image, target / image.name)
            print(f"{split}/{class_name}: {len(images)} images")


if __name__ == "__main__":
    main()
