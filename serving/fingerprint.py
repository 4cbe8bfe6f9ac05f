"""A model's identity: the sha256 of its weights and buffers (operating point and guard included).

Two models with the same fingerprint answer every image the same way; a retrained or recalibrated model gets a new
one. The export cache keys ONNX graphs on it, and results files record it (trainer.predict)."""

import hashlib

import torch
from torch import nn


def update_with_tensors(digest: "hashlib._Hash", module: nn.Module) -> None:
    """Feed every parameter and buffer of `module` (name, dtype, shape and bytes) into `digest`."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_sha256(module: nn.Module) -> str:
    """sha256 (hex) of every parameter and buffer of `module`, wherever it was loaded from."""
    digest = hashlib.sha256()
    update_with_tensors(digest, module)
    return digest.hexdigest()
