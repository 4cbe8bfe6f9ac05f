"""Loading a trained model by folder or Hub repo id: the `--model` option every command shares, its default, and the
error that says how to get a model when there is none."""

import argparse
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError

from .model import PneumoniaClassifier

DEFAULT_MODEL = "outputs/best"  # where the trainer saves the best model; the app's and the commands' default


class ModelNotFound(RuntimeError):
    """No usable model at the given folder or Hub id; the message says how to get one."""


def add_model_argument(parser: argparse.ArgumentParser, default: str = DEFAULT_MODEL,
                       run_folder: bool = False) -> None:
    """The `--model` option of every command that loads a trained model (a run folder too where `run_folder`)."""
    where = "A training run folder, its best/," if run_folder else "A folder saved by the trainer (outputs/best)"
    parser.add_argument("--model", default=default, help=f"{where} or a Hub repo id (NAME/REPO).")


def load_model(model_id: str) -> PneumoniaClassifier:
    """The model of a trainer output folder or Hub repo, in eval mode; ModelNotFound, saying what to do, when there
    is none. Serve it through `Predictor(model)`."""
    try:
        model = PneumoniaClassifier.from_pretrained(model_id)
    except (OSError, ValueError, EntryNotFoundError) as error:  # no folder, unknown repo, offline Hub, bad id
        raise ModelNotFound(
            f"No model could be loaded from {model_id!r} ({type(error).__name__}: {error}).\n"
            "Train one with `python -m trainer --output_dir outputs` (add --no_pretrained offline), or give a folder "
            "saved by the trainer (outputs/best) or a Hub repo id such as NAME/REPO."
        ) from error
    return model


def hub_revision(model_id: str) -> str | None:
    """The commit of the Hub repo `model_id` that load_model read (from the local Hub cache), None for a folder."""
    if Path(model_id).is_dir():
        return None
    config = try_to_load_from_cache(model_id, "config.json")
    return Path(config).parent.name if isinstance(config, str) else None  # .../snapshots/<commit>/config.json
