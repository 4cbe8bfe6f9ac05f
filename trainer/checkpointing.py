"""Resumable training: Accelerate save_state/load_state every epoch and on SIGTERM / Ctrl-C.

A checkpoint holds what training changes and nothing else (~2 MB): the head's weights (the frozen backbone is
re-created from its own weights by every run, and the guard and operating point are fitted after training),
what accelerate saves besides (optimizer, sampler, RNG states), the scheduler and a TrainingProgress: epochs
done, batches done in the current epoch, that epoch's running sums, the RNG state the epoch started from, the
best epoch's head and the history so far. Shuffles come from accelerate's seedable sampler (seed + epoch), so a
resumed epoch replays the same order and skips the batches already done.
"""

import logging
import shutil
import signal
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open

logger = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a resumable state."""


class TrainingProgress:
    """Where training is; registered with `accelerator.register_for_checkpointing`."""

    def __init__(self):
        self.epoch = 0  # epochs fully done
        self.step = 0  # batches done in epoch `epoch + 1`
        self.epoch_sums = {"losses": [], "correct": 0, "seen": 0}
        self.epoch_rng = torch.get_rng_state()
        self.best: dict | None = None
        self.best_head: dict | None = None  # the best epoch's head weights: best/ is written from them at the end
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_sums": self.epoch_sums,
                "epoch_rng": self.epoch_rng, "best": self.best, "best_head": self.best_head,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class StopOnSignal:
    """Turns SIGTERM and SIGINT into a flag checked between batches (restores the handlers on exit)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.request) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def request(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


PROGRESS_FILE = "custom_checkpoint_1.pkl"  # TrainingProgress, the second object registered for checkpointing
WEIGHTS_FILE = "model.safetensors"  # accelerate's name for the (one) prepared model's weights


def trainable_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of the parameters that training changes (the head's), as the prepared model names them."""
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def save_trainable_weights_only(models, weights, output_dir) -> None:
    """accelerate save-state pre-hook: keep only the trainable weights in what is saved."""
    for model, state in zip(models, weights):
        for name in set(state) - trainable_names(model):
            del state[name]


def check_trainable_weights(models, input_dir) -> None:
    """accelerate load-state pre-hook: the state must hold every trainable weight (the rest is loaded non-strictly)."""
    with safe_open(Path(input_dir) / WEIGHTS_FILE, "pt") as saved:
        missing = trainable_names(models[0]) - set(saved.keys())
    if missing:
        raise ValueError(f"{input_dir} holds no weights for {sorted(missing)[:4]}: not a state of this model's head.")


def use_lean_states(accelerator: Accelerator) -> None:
    """Make save_state / load_state (`strict=False`) write and read the trainable weights only."""
    accelerator.register_save_state_pre_hook(save_trainable_weights_only)
    accelerator.register_load_state_pre_hook(check_trainable_weights)


def save_resumable_state(accelerator: Accelerator, output_dir: Path, keep: int) -> None:
    """A new output_dir/checkpoints/checkpoint_N, then the oldest removed so that `keep` remain (after saving, so a
    failed save never leaves fewer). Routine, so logged at debug level, not as accelerate's warning."""
    accelerator.save_state()
    if accelerator.is_main_process:
        found = saved_checkpoints(output_dir)
        for number in sorted(found)[:-keep]:
            shutil.rmtree(found[number])
            logger.debug("removed %s (--checkpoint_total_limit %d)", found[number], keep)


def saved_checkpoints(output_dir: Path) -> dict[int, Path]:
    """output_dir/checkpoints/checkpoint_N folders by N (Accelerate's automatic naming)."""
    folders = (output_dir / "checkpoints").glob("checkpoint_*")
    return {int(p.name.split("_")[-1]): p for p in folders if p.name.split("_")[-1].isdigit()}


def resolve_checkpoint(value: str, output_dir: Path) -> Path:
    """`latest` → the newest output_dir/checkpoints/checkpoint_N; otherwise the given folder, named anything."""
    if value != "latest":
        path = Path(value)
    else:
        found = saved_checkpoints(output_dir)
        if not found:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint under {output_dir / 'checkpoints'}.")
        path = found[max(found)]
    if not (path / PROGRESS_FILE).is_file():
        raise ValueError(f"--resume_from_checkpoint: {path} is not a checkpoint folder written by this trainer "
                         f"(no {PROGRESS_FILE}); give a folder from OUTPUT_DIR/checkpoints, or `latest`.")
    return path


def next_checkpoint_number(output_dir: Path) -> int:
    """The number the next automatically named checkpoint gets: after every one already there."""
    return max(saved_checkpoints(output_dir), default=-1) + 1


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to start afresh over an earlier run's resumable states unless told to (transformers'
    --overwrite_output_dir convention); ValueError saying both ways out."""
    states = output_dir / "checkpoints"
    if resuming or overwrite or not saved_checkpoints(output_dir):
        return
    raise ValueError(f"{states} holds resumable states of an earlier run, which starting afresh would delete. "
                     "Continue that run with --resume_from_checkpoint latest, or start afresh with "
                     "--overwrite_output_dir (deletes them).")
