"""The dataset on the Hub (dataset_scripts.push_dataset), training from it with transformers' flag names, and the
cross-split duplicate check (dataset_scripts.check_dataset). The Hub is the loopback server (tests/hub_server.py)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml
from huggingface_hub import DatasetCard, HfApi, ModelCard, snapshot_download
from PIL import Image

from dataset_scripts.check_dataset import main as check_dataset
from dataset_scripts.push_dataset import push_dataset
from tests.conftest import FAST_TRAINING, SAMPLE_DIR, SERVING_GUARD, cli_error
from tests.hub_server import TOKEN, USER
from tests.test_hub import EXPECTED_FILES
from trainer.__main__ import cli as trainer
from trainer.data import load_chest_xray, load_image_dataset, make_splits
from trainer.features import files_fingerprint

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="session")
def pushed_dataset(hub) -> str:
    """The bundled sample published once by push_dataset, at the trainer's default split."""
    repo_id = f"{USER}/chest-xray-sample"
    push_dataset(SAMPLE_DIR, repo_id, token=TOKEN)
    return repo_id


def test_training_from_the_hub_dataset_gives_the_folder_runs_splits_and_metrics_and_pushes_when_it_ends(
        pushed_dataset, trained_run, tmp_path):
    """trained_run trained from the bundled folders with the same options and seed (conftest.py); this run trains from
    the same images published as a dataset, and ends with --push_to_hub to a private repo."""
    folder_run, folder_results = trained_run
    output_dir, model_id = tmp_path / "from-hub", f"{USER}/from-training"
    results = trainer([*FAST_TRAINING, "--num_train_epochs", "3", "--lr_patience", "0", *SERVING_GUARD, "--dataset_name",
                       pushed_dataset, "--output_dir", str(output_dir), "--push_to_hub", "--hub_model_id", model_id,
                       "--hub_token", TOKEN, "--hub_private_repo"])
    from_folders, from_hub = (json.loads((run / "splits.json").read_text()) for run in (folder_run, output_dir))
    for split in SPLITS:
        assert from_hub[split] == from_folders[split] and from_hub[split], split  # original file names, both sources
    assert "the validation split of the dataset " + pushed_dataset in from_hub["procedure"]
    test_metrics = {key: value for key, value in folder_results.items() if key.startswith("test_")}
    assert {key: results[key] for key in test_metrics} == test_metrics

    # The push at the end of training: every file, the run's results, and a card that names the dataset
    info = HfApi(token=TOKEN).model_info(model_id)
    assert info.private and EXPECTED_FILES <= {s.rfilename for s in info.siblings}
    pushed = Path(snapshot_download(model_id, token=TOKEN))
    assert json.loads((pushed / "all_results.json").read_text()) == json.loads(json.dumps(results))
    card = ModelCard.load(pushed / "README.md")
    assert card.data.datasets == [pushed_dataset] and card.data.eval_results[0].dataset_type == pushed_dataset
    assert (output_dir / "best" / "README.md").read_text() == (pushed / "README.md").read_text()  # the same card


@pytest.mark.slow  # a new Python process
def test_the_dataset_card_names_splits_and_labels_and_the_parquet_loads_with_datasets_alone(pushed_dataset, tmp_path):
    metadata = yaml.safe_load(DatasetCard.load(pushed_dataset).content.split("---")[1])
    assert metadata["license"] == "cc-by-4.0"
    assert [split["name"] for split in metadata["dataset_info"]["splits"]] == list(SPLITS)
    assert [entry["split"] for entry in metadata["configs"][0]["data_files"]] == list(SPLITS)
    label = next(feature for feature in metadata["dataset_info"]["features"] if feature["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    body = DatasetCard.load(pushed_dataset).text
    assert "Research data, not for clinical use" in body and "CC BY 4.0" in body and "kermany2018" in body
    assert "near-duplicates between `train/` and `test/`" in body and "found **none**" in body

    # A clean Python with `datasets` and nothing of this project: rows, columns and labels as the folders have them
    code = ("import json, datasets\n"
            f"data = datasets.load_dataset({pushed_dataset!r})\n"
            "print(json.dumps({name: {'columns': part.column_names, 'file_name': list(part['file_name']), "
            "'label': list(part['label']), 'kaggle_split': sorted(set(part['kaggle_split'])), "
            "'size': list(part[0]['image'].size)} for name, part in data.items()}))\n")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HOME": str(tmp_path / "hf-home")})
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    splits, _ = make_splits(load_chest_xray(SAMPLE_DIR), 0.1, 42)  # the trainer's defaults
    for name, part in splits.items():
        assert loaded[name]["columns"] == ["image", "label", "patient_id", "kaggle_split", "file_name"]
        assert loaded[name]["file_name"] == list(part["file_name"]) and loaded[name]["label"] == list(part["label"])
        assert loaded[name]["kaggle_split"] == ["test" if name == "test" else "train"]
        assert loaded[name]["size"] == [224, 224]


def test_a_local_copy_of_the_dataset_loads_as_the_hub_one(pushed_dataset, tmp_path):
    local = snapshot_download(pushed_dataset, repo_type="dataset", local_dir=tmp_path / "copy")
    from_hub, from_copy = load_image_dataset(pushed_dataset), load_image_dataset(local)
    for split in SPLITS:
        assert list(from_copy[split]["file_name"]) == list(from_hub[split]["file_name"]), split
        assert from_copy[split][0]["image"].tobytes() == from_hub[split][0]["image"].tobytes(), split
        # the same images by content: a run from the copy reuses the features cached by a run from the Hub
        assert files_fingerprint(from_copy[split]) == files_fingerprint(from_hub[split]), split


def write_parquet_dataset(folder, splits: dict[str, datasets.Dataset]) -> str:
    """A local `datasets` dataset as the Hub holds one: data/SPLIT-00000-of-00001.parquet per split."""
    for name, part in splits.items():
        part.to_parquet(folder / "data" / f"{name}-00000-of-00001.parquet")
    return str(folder)


@pytest.fixture(scope="module")
def sample_splits() -> dict[str, datasets.Dataset]:
    """The bundled sample's train and test splits with their images embedded, as a Hub dataset holds them."""
    data = load_chest_xray(SAMPLE_DIR)
    return {name: part.cast_column("image", datasets.Image(decode=False)).map(
        lambda row: {"image": {"bytes": open(row["image"]["path"], "rb").read(), "path": None}})
        .cast_column("image", datasets.Image()) for name, part in data.items()}


def test_a_dataset_without_the_named_columns_or_classes_is_refused_in_one_line(sample_splits, tmp_path):
    renamed = {name: part.rename_columns({"image": "img", "label": "finding"}) for name, part in sample_splits.items()}
    folder = write_parquet_dataset(tmp_path / "renamed", renamed)
    output = ["--output_dir", str(tmp_path / "out"), "--no_pretrained"]
    message = cli_error(trainer, ["--dataset_name", folder, *output])
    assert "has no column image or label" in message and "'img'" in message and "--image_column_name" in message
    assert "\n" not in message

    relabelled = {name: part.cast_column("label", datasets.ClassLabel(names=["cat", "dog"]))
                  for name, part in sample_splits.items()}
    message = cli_error(trainer, ["--dataset_name", write_parquet_dataset(tmp_path / "cats", relabelled), *output])
    assert "column 'label' holds ['cat', 'dog'], not the classes NORMAL and PNEUMONIA" in message

    message = cli_error(trainer, ["--dataset_name", write_parquet_dataset(tmp_path / "no-test", {
        "train": sample_splits["train"]}), *output])
    assert "has splits ['train'], not test" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written

    # Other column names are read when named; classes in another order are aligned to NORMAL=0, PNEUMONIA=1
    swapped = {name: part.cast_column("finding", datasets.ClassLabel(names=["PNEUMONIA", "NORMAL"]))
               for name, part in renamed.items()}  # the same integers, now meaning the other class
    loaded = load_image_dataset(write_parquet_dataset(tmp_path / "swapped", swapped), image_column="img",
                                label_column="finding")
    assert list(loaded["test"]["label"]) == [1 - label for label in sample_splits["test"]["label"]]


def test_without_a_validation_split_it_groups_by_a_patient_column_or_says_it_split_by_image(sample_splits):
    by_patient, procedure = make_splits(datasets.DatasetDict(sample_splits), 0.1, 42, "a/b")
    assert "patient id from its patient_id column" in procedure
    assert set(by_patient["train"]["patient_id"]).isdisjoint(by_patient["validation"]["patient_id"])
    folders, _ = make_splits(load_chest_xray(SAMPLE_DIR), 0.1, 42)
    assert list(by_patient["validation"]["file_name"]) == list(folders["validation"]["file_name"])

    anonymous = datasets.DatasetDict({name: part.remove_columns("patient_id") for name, part in sample_splits.items()})
    by_image, procedure = make_splits(anonymous, 0.1, 42, "a/b")
    assert "drawn image by image" in procedure and "one patient's images may be on both sides" in procedure
    assert len(by_image["validation"]) == 30 and by_image["validation"]["label"].count(0) == 10  # stratified


def test_check_dataset_finds_a_test_radiograph_copied_into_train(sample_copy, capsys):
    test_image = sorted((sample_copy / "test" / "NORMAL").glob("*.jpeg"))[0]
    copy = sample_copy / "train" / "NORMAL" / "renamed-copy.jpeg"
    Image.open(test_image).save(copy, quality=70)  # re-encoded: not the same bytes, the same radiograph
    assert check_dataset([str(sample_copy)]) == 1
    output = capsys.readouterr().out
    assert "near-duplicates between train/ and test/: 1" in output and f"{copy} ~ {test_image}" in output
    assert "1 test image(s) also in train/" in output

    copy.unlink()
    shutil.copy(sorted((sample_copy / "train" / "NORMAL").glob("*.jpeg"))[0], copy)  # a copy within train/ is fine
    assert check_dataset([str(sample_copy)]) == 0
    assert "near-duplicates between train/ and test/: 0" in capsys.readouterr().out
