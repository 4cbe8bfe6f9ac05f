"""Fast CPU inference: the model's serving forward pass exported to ONNX and run by ONNX Runtime.

`benchmarks/inference_speed.py` compares it with plain eager PyTorch (results in benchmarks/RESULTS.md);
probabilities agree within 1e-5 (tested). The export is made from the weights in memory, so it can never disagree
with them, and kept on disk under a key of everything it depends on (serving/export_cache.py): the next
process serving the same model reads it instead. PyTorch still preprocesses, calibrates, computes the guard's float64
distance and the Grad-CAM weights (a backward pass through the head only, serving/heatmap.py).
"""

import logging
from contextlib import contextmanager

import numpy as np
import onnxruntime
import torch
from torch import nn

from .export_cache import export_key, read_export, write_export

logger = logging.getLogger(__name__)

INPUT, OUTPUTS = "pixel_values", ["logits", "guard_statistics", "feature_map"]


class ServingForward(nn.Module):
    """What is exported: `model.serving_forward` (logits, guard statistics, last feature map)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.serving_forward(pixel_values)


@contextmanager
def in_eval_mode(module: nn.Module):
    """`module` and its submodules in eval mode for the block, then each back in the mode it had."""
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes.items():
            submodule.training = training


def onnx_bytes(module: nn.Module, input_size: list[int], output_names: list[str]) -> bytes:
    """`module(pixel_values)` in eval mode, exported to ONNX by the dynamo exporter, batch size dynamic, weights
    inside; the module's mode is left as the caller had it. Read from the export cache when any process exported
    the same network before (serving/export_cache.py)."""
    key = export_key(module, input_size, output_names)
    graph = read_export(key)
    if graph is None:
        graph = export_onnx(module, input_size, output_names)
        write_export(key, graph)
    return graph


def export_onnx(module: nn.Module, input_size: list[int], output_names: list[str]) -> bytes:
    example = torch.zeros(2, *input_size)  # 2, not 1: the exporter would fix a batch dimension of 1
    with in_eval_mode(module):
        program = torch.onnx.export(module, (example,), input_names=[INPUT], output_names=output_names,
                                    dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def onnx_session(graph: bytes, threads: int = 0, allow_spinning: bool = False) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for `graph`: `threads` intra-op threads (0: one per core), idle threads not spinning
    unless asked (spinning threads starve the PyTorch preprocessing between runs: 4.4 vs 0.6 ms measured)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class OnnxForward:
    """Callable like `model.serving_forward`, on CPU tensors, backed by an ONNX Runtime session (thread-safe)."""

    def __init__(self, model: nn.Module, allow_spinning: bool = False):
        exported = onnx_bytes(ServingForward(model), model.preprocessing["input_size"], OUTPUTS)
        self.session = onnx_session(exported, allow_spinning=allow_spinning)

    def __call__(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = np.ascontiguousarray(pixel_values.detach().cpu().float().numpy())
        return tuple(torch.from_numpy(output) for output in self.session.run(OUTPUTS, {INPUT: pixels}))


def onnx_forward(model: nn.Module) -> OnnxForward | None:
    """The exported forward pass, or None (eager PyTorch stays in use) when this backbone cannot be exported."""
    try:
        return OnnxForward(model)
    except Exception as error:  # the exporter and the runtime raise many types for unsupported operators
        logger.warning("ONNX Runtime export failed (%s: %s); predicting with eager PyTorch instead.",
                       type(error).__name__, error)
        return None
