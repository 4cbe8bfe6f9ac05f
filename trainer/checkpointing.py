"""Resumable training: Accelerate save_state/load_state every epoch and on SIGTERM / Ctrl-C.

A checkpoint holds what accelerate saves (head weights, optimizer, RNG states), the scheduler and a
TrainingProgress: epochs done, batches done in the current epoch, that epoch's running sums, the RNG
state the epoch started from, and the history so far. Shuffles come from accelerate's seedable sampler
(seed + epoch), so a resumed epoch replays the same order and skips the batches already done.
"""

import signal
from pathlib import Path

import torch


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
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_sums": self.epoch_sums,
                "epoch_rng": self.epoch_rng, "best": self.best, "history": self.history}

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


def resolve_checkpoint(value: str, output_dir: Path) -> Path:
    """`latest` → the newest output_dir/checkpoints/checkpoint_N; otherwise the given folder."""
    if value != "latest":
        path = Path(value)
    else:
        found = sorted((output_dir / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
        if not found:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint under {output_dir / 'checkpoints'}.")
        path = found[-1]
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint: {path} is not a checkpoint folder.")
    return path
