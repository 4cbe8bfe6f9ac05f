"""Resumable states: what they hold and how old ones are removed, on a real Accelerator and a small model with a
frozen body (training runs that resume are in test_resume.py)."""

import logging

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from torch import nn

from trainer.checkpointing import save_resumable_state, saved_checkpoints, use_lean_states


class FrozenBodyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(8, 8), nn.Linear(8, 2)
        self.body.requires_grad_(False)
        self.register_buffer("fitted_later", torch.zeros(8, 8, dtype=torch.float64))  # like the guard's matrix


def prepared(output_dir):
    """A fresh model and its Adam (head only), prepared by an Accelerator that saves lean states into output_dir."""
    accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                                  automatic_checkpoint_naming=True))
    model = FrozenBodyModel()
    model, optimizer = accelerator.prepare(model, torch.optim.Adam(model.head.parameters()))
    use_lean_states(accelerator)
    return accelerator, model, optimizer


def test_a_state_holds_only_the_trainable_weights_and_restores_them(tmp_path):
    torch.manual_seed(0)
    accelerator, model, optimizer = prepared(tmp_path)
    model.head(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    save_resumable_state(accelerator, tmp_path, keep=2)
    [state] = saved_checkpoints(tmp_path).values()
    assert set(load_file(state / "model.safetensors")) == {"head.weight", "head.bias"}

    torch.manual_seed(1)  # another initialisation: the loaded state must replace the head, and only the head
    reloading, fresh, fresh_optimizer = prepared(tmp_path)
    body = {key: value.clone() for key, value in fresh.body.state_dict().items()}
    reloading.load_state(state, strict=False)
    assert torch.equal(fresh.head.weight, model.head.weight) and torch.equal(fresh.head.bias, model.head.bias)
    assert all(torch.equal(value, fresh.body.state_dict()[key]) for key, value in body.items())
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_state_without_the_trainable_weights_is_refused(tmp_path):
    accelerator, model, _ = prepared(tmp_path)
    save_resumable_state(accelerator, tmp_path, keep=2)
    [state] = saved_checkpoints(tmp_path).values()
    model.body.requires_grad_(True)  # now the body is trainable too, and the state has no weights for it
    with pytest.raises(ValueError, match=r"holds no weights for \['body.bias', 'body.weight'\]"):
        accelerator.load_state(state, strict=False)


def test_old_states_are_removed_after_the_new_one_is_saved_without_a_warning(tmp_path, caplog):
    accelerator, _, _ = prepared(tmp_path)
    with caplog.at_level(logging.DEBUG):
        for _ in range(4):
            save_resumable_state(accelerator, tmp_path, keep=2)
    assert sorted(saved_checkpoints(tmp_path)) == [2, 3]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "removed" in caplog.text and "checkpoint_1" in caplog.text
