"""The ONNX export cache (serving/export_cache.py): a network exported once is read by the next caller, and anything
the graph depends on makes a new export. A small convolutional network stands in for the ResNet (an export in ~1 s)."""

import numpy as np
import pytest
import torch
from torch import nn

from serving import export_cache, runtime
from serving.runtime import onnx_bytes, onnx_session

INPUT_SIZE = [3, 16, 16]


class Scaled(nn.Module):
    """A convolution, a buffer and a plain setting, as PneumoniaClassifier has weights, buffers and labels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("offset", torch.zeros(4))
        self.scale = 2.0

    def forward(self, pixel_values):
        features = self.conv(pixel_values).mean(dim=(2, 3)) + self.offset
        return features * self.scale, features.sum(dim=1, keepdim=True)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and the list of the exports actually made (not read from the cache)."""
    monkeypatch.setenv("PNEUMONIA_ONNX_CACHE", str(tmp_path / "onnx"))
    made = []
    real = runtime.export_onnx
    monkeypatch.setattr(runtime, "export_onnx", lambda *args: made.append(args[0]) or real(*args))
    return tmp_path / "onnx", made


def run(graph: bytes, pixels: torch.Tensor) -> list[np.ndarray]:
    return onnx_session(graph, threads=1).run(None, {"pixel_values": pixels.numpy()})


def test_the_same_network_is_exported_once_and_read_back_identical(cache):
    folder, made = cache
    torch.manual_seed(0)
    network = Scaled().eval()
    first = onnx_bytes(network, INPUT_SIZE, ["scaled", "total"])
    second = onnx_bytes(network, INPUT_SIZE, ["scaled", "total"])
    assert len(made) == 1 and second == first and len(list(folder.glob("*.onnx"))) == 1
    pixels = torch.rand(3, *INPUT_SIZE)
    with torch.no_grad():
        expected = [output.numpy() for output in network(pixels)]
    for output, reference in zip(run(second, pixels), expected):
        np.testing.assert_allclose(output, reference, rtol=1e-5, atol=1e-6)
    # A copy with equal weights in another object (what a new process loads) is the same network too
    copy = Scaled().eval()
    copy.load_state_dict(network.state_dict())
    assert onnx_bytes(copy, INPUT_SIZE, ["scaled", "total"]) == first and len(made) == 1


def test_weights_buffers_settings_and_output_names_each_change_the_key():
    network = Scaled().eval()
    outputs = ["scaled", "total"]
    keys = {"original": export_cache.export_key(network, INPUT_SIZE, outputs)}
    with torch.no_grad():
        network.conv.weight[0, 0, 0, 0] += 1
    keys["weight changed in place"] = export_cache.export_key(network, INPUT_SIZE, outputs)
    network.offset.fill_(0.5)
    keys["buffer changed"] = export_cache.export_key(network, INPUT_SIZE, outputs)
    network.scale = 3.0
    keys["plain setting changed"] = export_cache.export_key(network, INPUT_SIZE, outputs)
    keys["other output names"] = export_cache.export_key(network, INPUT_SIZE, ["a", "b"])
    keys["other input size"] = export_cache.export_key(network, [3, 32, 32], ["a", "b"])
    assert len(set(keys.values())) == len(keys)
    assert export_cache.export_key(network.train(), [3, 32, 32], ["a", "b"]) == keys["other input size"]  # exported in eval mode


def test_a_cache_turned_off_or_not_writable_still_gives_the_export(cache, tmp_path, monkeypatch):
    folder, made = cache
    monkeypatch.setenv("PNEUMONIA_ONNX_CACHE", "")
    assert onnx_bytes(Scaled().eval(), INPUT_SIZE, ["scaled", "total"]) and len(made) == 1
    assert not folder.exists() and export_cache.read_export("0" * 64) is None
    (tmp_path / "a file").write_text("not a folder")
    monkeypatch.setenv("PNEUMONIA_ONNX_CACHE", str(tmp_path / "a file" / "onnx"))
    export_cache.write_export("0" * 64, b"graph")  # logged, not raised
    assert export_cache.read_export("0" * 64) is None


def test_the_least_recently_used_exports_go_once_the_folder_is_full(cache, monkeypatch):
    folder, _ = cache
    monkeypatch.setattr(export_cache, "MAX_CACHE_BYTES", 2_000)
    for key in "abc":  # 1,000 bytes each: the third goes over the limit
        export_cache.write_export(key, key.encode() * 1_000)
        if key == "b":
            assert export_cache.read_export("a") == b"a" * 1_000  # read: now more recently used than "b"
    assert sorted(path.stem for path in folder.glob("*.onnx")) == ["a", "c"]
    assert export_cache.read_export("b") is None and not list(folder.glob("*.partial"))
