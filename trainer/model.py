"""A fresh model for training: the serving architecture (serving/model.py) with ImageNet weights in its backbone,
timm's own from the Hub (downloaded once into the Hugging Face cache) or read from a local file
(`--pretrained_weights`, for machines without internet); the same loader checks both."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import timm
from huggingface_hub import constants, get_session, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from torch import nn

from serving.model import PneumoniaClassifier
from serving.preprocessing import preprocessing_config

# What `hf download timm/<model>` and the torchvision / timm releases hold, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but could not be downloaded, found in the cache or read from a file."""


def weights_cached(model_name: str) -> bool:
    """Whether the default ImageNet weights of `model_name` are already in the Hugging Face cache."""
    repo_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    return bool(repo_id) and any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in WEIGHT_FILES)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One request to the Hub endpoint through the Hub client's own session (so HTTPS_PROXY and HF_ENDPOINT
    apply), with a short timeout instead of the download's slow retries. Any HTTP answer counts as reachable."""
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # httpx's transport errors: refused, DNS, timeout, proxy failure
        return False


@dataclass
class HubWeights:
    """ImageNet weights downloaded from the Hub: the file in the local cache, and the repo and commit it came from."""

    path: Path
    repo_id: str
    revision: str


def imagenet_weights_from_hub(model_name: str) -> HubWeights:
    """timm's default ImageNet weights of `model_name` (its `hf_hub_id` repo), from the Hub or the local cache; a clear
    error at once when they cannot be had."""
    repo_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    advice = ("Check the network, pass --pretrained_weights FILE_OR_FOLDER with weights downloaded elsewhere, or "
              "--no_pretrained to train from random initialisation.")
    if not weights_cached(model_name) and (constants.HF_HUB_OFFLINE or not hub_reachable()):
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {model_name!r} are not in the local cache and the Hub ({constants.ENDPOINT}) "
            f"is {'disabled by HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else 'unreachable'}. {advice}")
    for name in WEIGHT_FILES:
        try:
            path = Path(hf_hub_download(repo_id, name))
        except EntryNotFoundError:
            continue
        except Exception as error:  # huggingface_hub raises many network and cache error types
            raise PretrainedWeightsUnavailable(
                f"Could not download ImageNet weights for {model_name!r} from {repo_id} ({type(error).__name__}: "
                f"{' '.join(str(error).split())}). {advice}") from error
        return HubWeights(path, repo_id, revision=path.parent.name)  # the cache's layout: snapshots/<commit>/<file>
    raise PretrainedWeightsUnavailable(f"{repo_id} on {constants.ENDPOINT} holds none of {', '.join(WEIGHT_FILES)}. "
                                       f"{advice}")


def weights_file(path: str | Path, model_name: str) -> Path:
    """The weights file behind `path`: the file itself, or the weights in a folder from `hf download timm/...`
    (whose config.json must name `model_name`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        config = path / "config.json"
        found = json.loads(config.read_text()).get("architecture", model_name) if config.is_file() else model_name
        if found != model_name:
            raise PretrainedWeightsUnavailable(f"{path} holds weights for {found!r}, not {model_name!r}.")
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise PretrainedWeightsUnavailable(f"{path} holds none of {', '.join(WEIGHT_FILES)}.")
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"--pretrained_weights: no such file or folder: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise PretrainedWeightsUnavailable(
            f"--pretrained_weights {path}: expected a state_dict file ({', '.join(WEIGHT_SUFFIXES)}) or a folder.")
    return path


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def load_backbone_weights(backbone: nn.Module, path: Path, model_name: str) -> None:
    """Load a timm or torchvision ImageNet state_dict into the (classifier-less) backbone; every backbone tensor
    must be matched, else an error lists the missing and unexpected keys."""
    try:
        state_dict = timm.models.load_state_dict(str(path))
    except Exception as error:  # torch.load and safetensors raise many types for a damaged or foreign file
        raise PretrainedWeightsUnavailable(f"Could not read {path} ({type(error).__name__}: {error}).") from error
    classifier = timm.models.get_pretrained_cfg(model_name).classifier  # ImageNet's 1000-class layer: not used
    given = {key: value for key, value in state_dict.items()
             if not key.startswith(f"{classifier}.") and not key.endswith("num_batches_tracked")}
    expected = backbone.state_dict()
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    misshapen = sorted(key for key in expected.keys() & given.keys() if expected[key].shape != given[key].shape)
    if missing or unexpected or misshapen:
        raise PretrainedWeightsUnavailable(
            f"{path} does not fit a {model_name} backbone: {listing('missing', missing)}; "
            f"{listing('unexpected', unexpected)}; {listing('wrongly shaped', misshapen)}. "
            f"Use ImageNet weights of --model_name {model_name} (timm or torchvision state_dict).")
    backbone.load_state_dict(given)


def listing(kind: str, keys: list[str], shown: int = 8) -> str:
    return f"{len(keys)} {kind} keys" + (f" {keys[:shown]}{' ...' if len(keys) > shown else ''}" if keys else "")


def model_for_training(model_name: str, pretrained: bool, head_hidden_dim: int, dropout: float,
                       weights: Path | None = None) -> PneumoniaClassifier:
    """A fresh model whose backbone carries ImageNet weights when `pretrained` is true: from the local file
    `weights` when given (never touching the network), else from the Hub."""
    model = PneumoniaClassifier(model_name, head_hidden_dim, dropout, preprocessing=preprocessing_config(model_name),
                                imagenet_weights=pretrained)
    if pretrained and weights is None:
        weights = imagenet_weights_from_hub(model_name).path
    if weights is not None:
        load_backbone_weights(model.backbone, weights, model_name)
    return model
