"""Publish a Kaggle-layout folder on the Hub as a `datasets` parquet dataset: train, validation and test.

validation is exactly the split the trainer carves from Kaggle's train/ at its defaults (same fraction, seed and
patient-grouped procedure), test is Kaggle's test/, and the rows are in the order the trainer's folder loader reads
them: the same seed trains the same model from the folders or from the Hub. The dataset card states the license,
citation, population, split procedure, per-split counts and the cross-split duplicate check.

    python -m dataset_scripts.push_dataset data/chest_xray --repo_id NAME/chest-xray-pneumonia [--hub_private_repo]
    accelerate launch -m trainer --dataset_name NAME/chest-xray-pneumonia
"""

import argparse
import logging
import sys
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image

from serving.labels import LABELS
from trainer.config import TrainingConfig
from trainer.data import PATIENT_COLUMN, SPLIT_FOLDERS, DatasetLayoutError, load_chest_xray, make_splits, quiet_datasets
from trainer.options import HubOptions, SeedOption, add_options
from trainer.push import push_failure

from .check_dataset import METHOD, cross_split_duplicates, split_images

TEMPLATE = Path(__file__).resolve().parent / "hub_files" / "dataset_card_template.md"
COLUMNS = ["image", "label", PATIENT_COLUMN, "kaggle_split", "file_name"]
KAGGLE_SPLIT = {"train": "train", "validation": "train", "test": "test"}
TRAINER_DEFAULTS = TrainingConfig()


def build_dataset(data_dir: Path, val_fraction: float, seed: int) -> tuple[datasets.DatasetDict, str]:
    """The folders as train / validation / test with the published columns, and the split procedure."""
    splits, procedure = make_splits(load_chest_xray(data_dir), val_fraction, seed)
    dataset = datasets.DatasetDict({name: part.add_column("kaggle_split", [KAGGLE_SPLIT[name]] * len(part))
                                   .select_columns(COLUMNS) for name, part in splits.items()})
    return dataset, procedure


def split_rows(dataset: datasets.DatasetDict) -> list[dict]:
    """Per split: images per class, images, patients, the Kaggle folder."""
    rows = []
    for name, part in dataset.items():
        counts = {label: part["label"].count(index) for index, label in enumerate(LABELS)}
        rows.append({"name": name, **counts, "images": len(part), "patients": len(set(part[PATIENT_COLUMN])),
                     "kaggle_split": KAGGLE_SPLIT[name]})
    return rows


def image_sizes(data_dir: Path) -> str:
    """The images' sizes in pixels, from their headers."""
    sizes = set()
    for path in (path for split in SPLIT_FOLDERS for path in split_images(data_dir, split)):
        with Image.open(path) as image:
            sizes.add(image.size)
    if len(sizes) == 1:
        return "every one {}×{} px".format(*sizes.pop())
    widths = sorted(width for width, _ in sizes)
    return f"{widths[0]:,}–{widths[-1]:,} px wide"


def dataset_card(repo_id: str, dataset: datasets.DatasetDict, procedure: str, data_dir: Path, val_fraction: float,
                 seed: int) -> DatasetCard:
    duplicates = cross_split_duplicates(data_dir)
    card_data = DatasetCardData(
        license="cc-by-4.0", pretty_name="Chest X-Ray Images (Pneumonia)", task_categories=["image-classification"],
        language=["en"], size_categories=["1K<n<10K" if dataset.num_rows["train"] > 1000 else "n<1K"],
        tags=["medical-imaging", "chest-x-ray", "pneumonia", "pediatric", "research-only"],
        source_datasets=["Kermany et al. 2018, doi:10.17632/rscbjbr9sj.2"])
    found = (f"{len(duplicates.pairs)} pair(s)" + "".join(f"; {a} ~ {b}" for a, b, *_ in duplicates.pairs)
             if duplicates.pairs else "none")
    numbering = duplicates.numbering()
    return DatasetCard.from_template(
        card_data, template_path=TEMPLATE, repo_id=repo_id, splits=split_rows(dataset), procedure=procedure,
        val_fraction=val_fraction, seed=seed, numbering=numbering[0].upper() + numbering[1:],
        method=METHOD, duplicates=found, sizes=image_sizes(data_dir))


def push_dataset(data_dir: Path, repo_id: str, token: str | None = None, private: bool = False,
                 val_fraction: float = TRAINER_DEFAULTS.val_fraction, seed: int = TRAINER_DEFAULTS.seed) -> str:
    """Push the card, then the parquet files (which add the splits and features to the card's YAML); returns the
    dataset's URL."""
    with quiet_datasets():
        dataset, procedure = build_dataset(data_dir, val_fraction, seed)
    card = dataset_card(repo_id, dataset, procedure, data_dir, val_fraction, seed)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id, repo_type="dataset",
                    commit_message="Dataset card")
    # datasets warns "Setting num_proc from 1 back to 1" for every one-shard split: nothing is wrong
    logging.getLogger("datasets.arrow_dataset").setLevel(logging.ERROR)
    dataset.push_to_hub(repo_id, token=token, private=private, commit_message="Upload train, validation and test")
    return str(url)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="Kaggle-layout folder holding train/ and test/.")
    parser.add_argument("--repo_id", required=True, help="Dataset repo to create or update, NAME/DATASET.")
    add_options(parser, HubOptions, SeedOption)
    parser.add_argument("--val_fraction", type=float, default=TRAINER_DEFAULTS.val_fraction,
                        help="Validation fraction of train/ (default: the trainer's, %(default)s).")
    args = parser.parse_args(argv)
    try:
        url = push_dataset(args.data_dir, args.repo_id, args.hub_token, args.hub_private_repo, args.val_fraction,
                           args.seed)
    except (DatasetLayoutError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except HfHubHTTPError as error:  # the folders are only read: running the command again loses nothing
        print(f"error: {push_failure(error, args.repo_id, HfApi().endpoint, token_flag='--hub_token')} The data in "
              f"{args.data_dir} is unchanged; run the same command again once that is fixed.", file=sys.stderr)
        return 1
    print(f"pushed to {url}; train from it with: accelerate launch -m trainer --dataset_name {args.repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
