"""Download the Kaggle "Chest X-Ray Images (Pneumonia)" dataset (paultimothymooney/chest-xray-pneumonia).

Needs Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME / KAGGLE_KEY) and network access;
uses `kagglehub` (`pip install kagglehub`). Prints the folder to pass as --data_dir.

    python -m dataset_scripts.download_kaggle [--output_dir data/]
"""

import argparse
import shutil
import sys
from pathlib import Path

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"


def find_data_dir(root: Path) -> Path:
    """The folder inside the download that holds train/ and test/ (the archive nests chest_xray/)."""
    for candidate in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise FileNotFoundError(f"No folder with train/ and test/ found under {root}.")


def download(output_dir: Path | None) -> Path:
    try:
        import kagglehub
    except ImportError as error:
        raise SystemExit("error: kagglehub is not installed; run `pip install kagglehub`.") from error
    try:
        root = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as error:  # kagglehub raises network, auth and HTTP errors of several types
        raise SystemExit(f"error: could not download {KAGGLE_DATASET} from Kaggle ({type(error).__name__}: {error}). "
                         "Check the network and your Kaggle credentials (~/.kaggle/kaggle.json or "
                         "KAGGLE_USERNAME/KAGGLE_KEY), or download the archive by hand from "
                         f"kaggle.com/datasets/{KAGGLE_DATASET} and unzip it.") from error
    data_dir = find_data_dir(root)
    if output_dir is not None:
        shutil.copytree(data_dir, output_dir, dirs_exist_ok=True)
        data_dir = output_dir
    return data_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="Copy the dataset here (default: leave it in kagglehub's cache).")
    args = parser.parse_args(argv)
    data_dir = download(args.output_dir)
    print(f"Dataset ready. Train with:\n  accelerate launch -m trainer --data_dir {data_dir}")


if __name__ == "__main__":
    sys.exit(main())
