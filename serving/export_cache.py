"""ONNX exports kept on disk, so that a new process does not export the same network again (~10 s on 2 cores).

An export is a pure function of what its key holds: the weights and buffers of every submodule, their plain
settings (labels, sizes), the source of the code that runs (the submodules' class files and this package), the
input size and output names, and the versions of the libraries that export. Any change is a new key, so a stale
graph is never read. The folder is `$HF_HOME/pneumonia-detector/onnx` (PNEUMONIA_ONNX_CACHE moves it; set it
empty to turn the cache off); the least recently used exports go once the folder passes MAX_CACHE_BYTES.
"""

import hashlib
import inspect
import logging
import os
from importlib.metadata import version
from pathlib import Path

from huggingface_hub import constants
from torch import nn

from .files import atomic_write
from .fingerprint import update_with_tensors

logger = logging.getLogger(__name__)

MAX_CACHE_BYTES = 1 << 30  # about twenty ResNet18 exports
PACKAGE_SOURCES = sorted(Path(__file__).parent.glob("*.py"))
PLAIN = (bool, int, float, str, list, tuple, dict, type(None))


def cache_folder() -> Path | None:
    folder = os.environ.get("PNEUMONIA_ONNX_CACHE", str(Path(constants.HF_HOME) / "pneumonia-detector" / "onnx"))
    return Path(folder) if folder else None


def source_files(module: nn.Module) -> list[Path]:
    """The files that define the classes of `module`'s submodules, and this package's files (the functions they
    call, such as the guard's statistics)."""
    classes = {type(submodule) for submodule in module.modules()}
    return sorted({Path(inspect.getfile(cls)) for cls in classes} | set(PACKAGE_SOURCES))


def export_key(module: nn.Module, input_size: list[int], output_names: list[str]) -> str:
    """sha256 (hex) of everything the export of `module` depends on (the module docstring's list); eval or training
    mode aside, as the export is always made in eval mode."""
    digest = hashlib.sha256()
    versions = [version(package) for package in ("torch", "onnx", "onnxscript", "timm")]
    digest.update(repr((versions, list(input_size), list(output_names))).encode())
    for path in source_files(module):
        digest.update(path.read_bytes())
    for name, submodule in module.named_modules():
        settings = sorted((key, repr(value)) for key, value in vars(submodule).items()
                          if not key.startswith("_") and key != "training" and isinstance(value, PLAIN))
        digest.update(repr((name, type(submodule).__qualname__, settings)).encode())
    update_with_tensors(digest, module)
    return digest.hexdigest()


def read_export(key: str) -> bytes | None:
    folder = cache_folder()
    if folder is None:
        return None
    path = folder / f"{key}.onnx"
    try:
        graph = path.read_bytes()
        os.utime(path)  # recently used: evicted last
    except OSError:  # not cached (or evicted by another process meanwhile)
        return None
    return graph


def write_export(key: str, graph: bytes) -> None:
    """Written whole, then renamed (a concurrent process never reads half a file); a folder that cannot be written
    only costs the next process the export."""
    folder = cache_folder()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / f"{key}.onnx") as partial:
            partial.write_bytes(graph)
        evict_least_recently_used(folder)
    except OSError as error:
        logger.info("ONNX export not cached in %s (%s)", folder, error)


def evict_least_recently_used(folder: Path) -> None:
    exports = sorted(folder.glob("*.onnx"), key=lambda path: path.stat().st_mtime, reverse=True)
    kept = 0
    for path in exports:
        kept += path.stat().st_size
        if kept > MAX_CACHE_BYTES:
            path.unlink(missing_ok=True)
