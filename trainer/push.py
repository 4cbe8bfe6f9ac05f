"""Push a finished run's best model to the Hugging Face Hub, with its model card, results and plots.

The card is the one training wrote to best/README.md, built again with the repo's name in it; after a
successful push best/README.md is the card the Hub has. The repo also gets private mode's files
(serving/browser_model.py): `onnx/model.onnx`, the served model as one ONNX graph for ONNX Runtime Web, and
`onnx/config.json`, exported from the run's best model at push time so that they always match the weights
pushed beside them.

Training calls this when given --push_to_hub; it also runs on its own, so a failed push can be
retried without training again:

    python -m trainer.push outputs --hub_model_id NAME/REPO [--hub_token T] [--hub_private_repo]
"""

import argparse
import logging
import sys
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from serving import PneumoniaClassifier
from serving.browser_model import browser_files

from .model_card import build_model_card
from .options import HubOptions, add_options

logger = logging.getLogger(__name__)

BEST_FILES = ["model.safetensors", "config.json", "modeling_pneumonia.py"]
PLOTS = ["confusion_matrix.png", "roc_curve.png", "pr_curve.png", "reliability_diagram.png", "training_curves.png"]
RUN_FILES = ["all_results.json", *PLOTS, "splits.json", "training_history.json", "training_config.json"]
RECALIBRATION_FILES = ["recalibration.json", "recalibration_reliability.png"]  # written by trainer.recalibrate
# An Inference Endpoint of the repo runs handler.py with the repo-root requirements.txt
ENDPOINT_FILES = [Path(__file__).resolve().parent / "hub_files" / name for name in ("handler.py", "requirements.txt")]


class PushError(RuntimeError):
    """A push that failed; the run in output_dir is untouched and the message says how to retry."""


def push_failure(error: Exception, repo_id: str, endpoint: str, token_flag: str = "--hub_token") -> str:
    """One line saying why a push to `repo_id` failed and, for the Hub's refusals, what to do about it."""
    status = error.response.status_code if isinstance(error, HfHubHTTPError) and error.response is not None else None
    # the Hub's error text spans several lines (the server's message, the URL, a hint): one line here
    cause = " ".join(f"{type(error).__name__}: {error}".split())
    way_out = {
        401: f"The Hub did not accept the token: give a valid write token ({token_flag}, HF_TOKEN or `hf auth login`).",
        403: f"The token may not write to {repo_id}: push to a repo under your own name or organisation, or use a "
             f"token with write access to {repo_id} ({token_flag}).",
    }.get(status, "")
    return f"Push to {repo_id} on {endpoint} failed ({cause}). {way_out}".strip()


def upload_operations(output_dir: Path, card: ModelCard) -> list[CommitOperationAdd]:
    """Every file the model repo gets, as commit operations (best/ files at the repo root)."""
    return ([CommitOperationAdd(name, output_dir / "best" / name) for name in BEST_FILES]
            + [CommitOperationAdd(name, output_dir / name) for name in RUN_FILES]
            + [CommitOperationAdd(name, output_dir / name) for name in RECALIBRATION_FILES if (output_dir / name).is_file()]
            + [CommitOperationAdd(path.name, path) for path in ENDPOINT_FILES]
            + [CommitOperationAdd("README.md", str(card).encode())])


def check_finished_run(output_dir: Path) -> None:
    """PushError naming what is missing unless output_dir holds a finished run's files."""
    missing = [str(p) for p in [*(output_dir / "best" / n for n in BEST_FILES), *(output_dir / n for n in RUN_FILES)]
               if not p.is_file()]
    if missing:
        raise PushError(f"{output_dir} is not a finished training run; missing: {', '.join(missing)}.")


def private_mode_operations(output_dir: Path) -> list[CommitOperationAdd]:
    """Private mode's files, exported from the run's best model; none (with a warning) if it cannot be exported."""
    try:
        files = browser_files(PneumoniaClassifier.from_pretrained(output_dir / "best"))
    except Exception as error:  # the exporter raises many types for unsupported operators
        logger.warning("Private mode's ONNX export failed (%s: %s); pushing without onnx/.", type(error).__name__, error)
        return []
    return [CommitOperationAdd(name, content) for name, content in files.items()]


def push_run(output_dir: str | Path, model_id: str, token: str | None = None, private: bool = False,
             commit_message: str = "Upload Pneumonia Detector model") -> CommitInfo:
    """Create the repo if needed and commit the run's model, card and results in one commit."""
    output_dir = Path(output_dir)
    check_finished_run(output_dir)
    card = build_model_card(output_dir, model_id)
    operations = upload_operations(output_dir, card)
    api = HfApi(token=token)
    retry = (f"The run in {output_dir} is intact; retry with: python -m trainer.push {output_dir} "
             f"--hub_model_id {model_id}")
    try:
        repo_url = api.create_repo(model_id, private=private, exist_ok=True)  # fails fast, before the export
        operations += private_mode_operations(output_dir)
        commit = api.create_commit(repo_url.repo_id, operations, commit_message=commit_message)
    except Exception as error:  # network, auth, offline mode and server errors all end the same way
        raise PushError(f"{push_failure(error, model_id, api.endpoint)} {retry}") from error
    card.save(output_dir / "best" / "README.md")  # best/ keeps the card the Hub has, naming the repo
    return commit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="The trainer's --output_dir of a finished run.")
    parser.add_argument("--hub_model_id", required=True, help="Model repo to push to, NAME/REPO.")
    add_options(parser, HubOptions)
    args = parser.parse_args(argv)
    try:
        commit = push_run(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
    except PushError as error:
        sys.exit(f"error: {error}")
    print(f"Pushed {args.output_dir} to {commit.repo_url} ({commit.commit_url})")


if __name__ == "__main__":
    main()
