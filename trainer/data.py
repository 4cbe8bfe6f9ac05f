"""Load the training data, from a Kaggle-layout folder or a `datasets` dataset, and make its splits.

Folder layout: DATA_DIR/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg. An extra val/ folder (16 images in the
Kaggle download) is ignored: validation comes from train/, stratified by label and grouped by
patient, so no patient has images on both sides. A dataset (`--dataset_name`, on the Hub or a local copy) brings
its own validation split, or a patient_id column to group by.
"""

import io
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from serving.images import BITMAP_SUFFIXES, ArchiveWalk, InputImageError, open_bitmap
from serving.labels import LABELS
from serving.preprocessing import eval_transform

logger = logging.getLogger(__name__)

BUNDLED_SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "chest_xray"
SPLIT_FOLDERS = ("train", "test")
PATIENT_COLUMN = "patient_id"
# personNNN_bacteria_MMM.jpeg, IM-NNNN-MMMM.jpeg, NORMAL2-IM-NNNN-MMMM.jpeg (see the data README).
# NORMAL2-IM-NNNN and IM-NNNN are treated as one patient: merging can only reduce leakage.
PATIENT_PATTERN = re.compile(r"^(?:(person\d+)_|(?:NORMAL2-)?(IM-\d+)-)")


class DatasetLayoutError(ValueError):
    """The data folder does not have the Kaggle layout or holds unreadable files."""


def patient_id(file_name: str) -> str:
    """Return the patient a Kaggle file name belongs to; unknown names count as their own patient."""
    match = PATIENT_PATTERN.match(Path(file_name).name)
    if match is None:
        return Path(file_name).stem
    return match.group(1) or match.group(2)


def class_images(class_dir: Path) -> list[Path]:
    """The images of one class folder that the imagefolder loader reads (bitmaps: JPEG, PNG...), in walk order."""
    return [path for path in ArchiveWalk([class_dir]).images() if path.suffix.lower() in BITMAP_SUFFIXES]


def check_layout(data_dir: Path) -> None:
    """Raise DatasetLayoutError unless every split has a non-empty folder per class."""
    if not data_dir.is_dir():
        raise DatasetLayoutError(f"Data folder {data_dir} does not exist. Pass --data_dir pointing at the "
                                 "Kaggle folder that holds train/ and test/ (or omit it to use the bundled sample).")
    if (data_dir / "val").is_dir():
        logger.info("Ignoring %s: validation is carved from train/ (grouped by patient).", data_dir / "val")
    for split in SPLIT_FOLDERS:
        if not (data_dir / split).is_dir():
            raise DatasetLayoutError(f"{data_dir} has no {split}/ folder. Expected the Kaggle layout "
                                     f"{data_dir}/{{train,test}}/{{NORMAL,PNEUMONIA}}/.")
        for class_name in LABELS:
            class_dir = data_dir / split / class_name
            if not class_dir.is_dir():
                raise DatasetLayoutError(f"Class folder {class_dir} is missing. Each of train/ and test/ "
                                         f"needs {' and '.join(LABELS)} folders.")
            if not class_images(class_dir):
                raise DatasetLayoutError(f"Class folder {class_dir} holds no images ({', '.join(BITMAP_SUFFIXES)}).")


def is_readable(path: Path) -> bool:
    """Decode at reduced scale (JPEG draft mode): catches truncated and corrupt files cheaply."""
    try:
        open_bitmap(path, (64, 64), "L")
        return True
    except InputImageError:
        return False


def indented(items: list, shown: int = 20) -> str:
    """One indented line per item (the first `shown`), for error messages that list files."""
    more = [f"... and {len(items) - shown} more"] if len(items) > shown else []
    return "".join(f"\n  {item}" for item in [*items[:shown], *more])


def check_images(data_dir: Path) -> None:
    """Raise DatasetLayoutError naming every image under data_dir that cannot be decoded."""
    paths = [p for split in SPLIT_FOLDERS for c in LABELS for p in class_images(data_dir / split / c)]
    unreadable = [p for p in paths if not is_readable(p)]
    if unreadable:
        raise DatasetLayoutError(f"{len(unreadable)} image(s) cannot be decoded; delete or replace them:{indented(unreadable)}")


@contextmanager
def quiet_datasets():
    """No `datasets` progress bars: for local files they say "Downloading data" although nothing is downloaded."""
    shown = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.utils.enable_progress_bars()


def load_chest_xray(data_dir: str | Path, verify_images: bool = True) -> datasets.DatasetDict:
    """Load train/ and test/ as a `datasets` imagefolder with columns image, label, file_name (CLASS/name).

    Raises DatasetLayoutError for a wrong layout or undecodable images, before any training.
    """
    data_dir = Path(data_dir)
    check_layout(data_dir)
    if verify_images:
        check_images(data_dir)
    data_files = {split: [str(p) for c in LABELS for p in class_images(data_dir / split / c)]
                  for split in SPLIT_FOLDERS}
    with quiet_datasets():
        dataset = datasets.load_dataset("imagefolder", data_files=data_files)
    names = dataset["train"].features["label"].names
    if tuple(names) != LABELS:
        raise DatasetLayoutError(f"Expected labels {LABELS} from the class folders, found {names}.")
    return add_file_names(dataset)


def load_training_data(config) -> datasets.DatasetDict:
    """The data a training run names (TrainingConfig): --dataset_name (Hub id or local copy), else --data_dir."""
    if config.dataset_name:
        return load_image_dataset(config.dataset_name, config.dataset_config_name, config.image_column_name,
                                  config.label_column_name)
    return load_chest_xray(config.data_dir)


def image_cells(part: datasets.Dataset) -> pa.ChunkedArray:
    """The image column's cells ({"bytes", "path"}) as Arrow, in dataset order: nothing decoded or copied."""
    return part.select_columns("image").with_format("arrow")[:]["image"]


def image_paths(part: datasets.Dataset) -> list[str | None]:
    """The path of every image (a local file, or the original name of bytes embedded in the dataset)."""
    return pc.struct_field(image_cells(part), "path").to_pylist()


def add_file_names(dataset: datasets.DatasetDict) -> datasets.DatasetDict:
    """Add file_name ("CLASS/name.jpeg") and patient_id (from the file name) columns without decoding any image."""
    for split, part in dataset.items():
        names = ["/".join(Path(path).parts[-2:]) for path in image_paths(part)]
        dataset[split] = part.add_column("file_name", names).add_column(PATIENT_COLUMN, [patient_id(n) for n in names])
    return dataset


def load_image_dataset(name: str, config_name: str | None = None, image_column: str = "image",
                       label_column: str = "label") -> datasets.DatasetDict:
    """A `datasets` dataset (Hub id or local copy) with train and test splits, an image column and a ClassLabel
    column of NORMAL / PNEUMONIA, renamed to image / label; file_name is added from the images' names when missing.

    Raises DatasetLayoutError in one line naming what the dataset has instead.
    """
    dataset = datasets.load_dataset(name, config_name)
    missing_splits = [split for split in SPLIT_FOLDERS if split not in dataset]
    if missing_splits:
        raise DatasetLayoutError(f"Dataset {name} has splits {list(dataset)}, not {' and '.join(missing_splits)}: the "
                                 "trainer needs train (and uses validation when there is one) and an untouched test.")
    for split, part in dataset.items():
        missing = [column for column in (image_column, label_column) if column not in part.column_names]
        if missing:
            raise DatasetLayoutError(f"Dataset {name} ({split}) has no column {' or '.join(missing)}; its columns are "
                                     f"{part.column_names}: name them with --image_column_name / --label_column_name.")
        labels = part.features[label_column]
        if not isinstance(labels, datasets.ClassLabel) or sorted(labels.names) != sorted(LABELS):
            found = labels.names if isinstance(labels, datasets.ClassLabel) else f"values of type {labels}"
            raise DatasetLayoutError(f"Dataset {name} ({split}): column {label_column!r} holds {found}, not the classes "
                                     f"{' and '.join(LABELS)}.")
    dataset = dataset.rename_columns({old: new for old, new in ((image_column, "image"), (label_column, "label"))
                                      if old != new})
    if tuple(dataset["train"].features["label"].names) != LABELS:
        dataset = dataset.align_labels_with_mapping({name: index for index, name in enumerate(LABELS)}, "label")
    if "file_name" not in dataset["train"].column_names:
        dataset = datasets.DatasetDict({split: part.add_column("file_name", [
            Path(path).name if path else f"{split}-{index:06d}" for index, path in enumerate(image_paths(part))])
            for split, part in dataset.items()})
    return dataset


def held_out_patients(labels: np.ndarray, patients: np.ndarray, val_fraction: float, seed: int) -> set[str]:
    """Per class, patients in a seeded random order, each taken when it brings the class's held-out image count
    closer to `val_fraction` of the class: every class ends within half a patient's images of its target."""
    rng = np.random.default_rng(seed)
    held_out = set()
    for label in np.unique(labels):
        in_class = labels == label
        target, taken = val_fraction * in_class.sum(), 0
        for patient in rng.permutation(np.unique(patients[in_class])):
            size = int(np.sum(in_class & (patients == patient)))
            if abs(taken + size - target) < abs(taken - target):
                held_out.add(patient)
                taken += size
    return held_out


def split_by_patient(train: datasets.Dataset, val_fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Carve a validation set of `val_fraction` of `train` (to within one patient), stratified by label and
    grouped by the patient_id column. sklearn's StratifiedGroupKFold only makes 1/k-sized folds (0.15 gave 14%,
    0.45 gave 50%)."""
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"--val_fraction must be in (0, 0.5), got {val_fraction}.")
    patients = np.array(train[PATIENT_COLUMN])
    held_out = np.isin(patients, list(held_out_patients(np.array(train["label"]), patients, val_fraction, seed)))
    return train.select(np.flatnonzero(~held_out)), train.select(np.flatnonzero(held_out))


def patient_split_procedure(val_fraction: float, seed: int, patients_from: str = "the file name",
                            train_from: str = "train/", test_from: str = "the untouched test/ folder") -> str:
    return (f"validation = whole patients (patient id from {patients_from}) drawn from {train_from} class by class in a "
            f"random order (seed {seed}) until each class has {val_fraction:g} of its images, to within one patient: "
            f"stratified by label, grouped by patient; test = {test_from}")


def make_splits(data: datasets.DatasetDict, val_fraction: float, seed: int,
                dataset_name: str | None = None) -> tuple[dict[str, datasets.Dataset], str]:
    """{"train", "validation", "test"} and the procedure that made them: a dataset's own validation split when it has
    one; else validation carved from train, grouped by patient when a patient_id column says who is who, and by
    image (stratified by label) otherwise."""
    if dataset_name is None:
        train, validation = split_by_patient(data["train"], val_fraction, seed)
        return {"train": train, "validation": validation, "test": data["test"]}, patient_split_procedure(val_fraction, seed)
    source = f"the dataset {dataset_name}"
    test = f"the untouched test split of {source}"
    if "validation" in data:
        procedure = f"validation = the validation split of {source}; train = its train split; test = {test}"
        return {"train": data["train"], "validation": data["validation"], "test": data["test"]}, procedure
    if PATIENT_COLUMN in data["train"].column_names:
        train, validation = split_by_patient(data["train"], val_fraction, seed)
        procedure = patient_split_procedure(val_fraction, seed, f"its {PATIENT_COLUMN} column",
                                            f"the train split of {source}", test)
    else:
        halves = data["train"].train_test_split(test_size=val_fraction, stratify_by_column="label", seed=seed)
        train, validation = halves["train"], halves["test"]
        procedure = (f"validation = {val_fraction:g} of the train split of {source}, drawn image by image (seed {seed}), "
                     f"stratified by label; the dataset has no {PATIENT_COLUMN} column, so one patient's images may "
                     f"be on both sides; test = {test}")
    return {"train": train, "validation": validation, "test": data["test"]}, procedure


def split_manifest(splits: dict[str, datasets.Dataset], procedure: str, val_fraction: float) -> dict:
    """The split actually used, as written to output_dir/splits.json."""
    files = {name: sorted(part["file_name"]) for name, part in splits.items()}
    achieved = len(files["validation"]) / (len(files["train"]) + len(files["validation"]))
    return {
        "procedure": procedure,
        "validation_fraction_requested": val_fraction,
        "validation_fraction": achieved,
        "label_names": list(LABELS),
        **files,
    }


def open_lazily(image: dict) -> Image.Image:
    """A `datasets` image cell ({"path", "bytes"}) opened with PIL: header read, pixels not yet decoded."""
    return Image.open(io.BytesIO(image["bytes"]) if image["bytes"] else image["path"])


def make_loader(dataset: datasets.Dataset, transform, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    """A DataLoader of {"pixel_values", "labels"} batches, decoding and transforming on the fly.

    Images reach `transform` opened but not decoded, so its first step can decode large JPEGs at reduced scale.
    """
    def apply(batch):
        return {"pixel_values": [transform(open_lazily(image)) for image in batch["image"]], "labels": batch["label"]}

    def collate(rows):
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}

    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    return DataLoader(undecoded.with_transform(apply), batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, collate_fn=collate)


def train_transform(preprocessing: dict, rotation_degrees: float) -> transforms.Compose:
    """The eval transform (serving/preprocessing.py) with the mission's augmentation after decoding:
    random horizontal flip, random rotation."""
    augmentation = [transforms.RandomHorizontalFlip(), transforms.RandomRotation(rotation_degrees)]
    decode, *rest = eval_transform(preprocessing).transforms
    return transforms.Compose([decode, *augmentation, *rest])
