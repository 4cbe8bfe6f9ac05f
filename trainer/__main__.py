"""`python -m trainer` / `accelerate launch -m trainer`: train, keep the best epoch, evaluate on test."""

import logging
import sys

from .checkpointing import TrainingInterrupted
from .data import DatasetLayoutError
from .model import PretrainedWeightsUnavailable
from .push import PushError
from .train import main


def cli(argv=None) -> dict:
    """`main`, with an error the user can fix as one line on stderr (`error: ...`, exit status 1), not a traceback."""
    try:
        return main(argv)
    except (DatasetLayoutError, PretrainedWeightsUnavailable, PushError, TrainingInterrupted, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    cli()
