"""A fresh model for training: the serving architecture (serving/model.py) with ImageNet weights in its backbone."""

import socket
from urllib.parse import urlparse

import timm
from huggingface_hub import constants, try_to_load_from_cache
from torch import nn

from serving.model import PneumoniaClassifier, frozen_backbone
from serving.preprocessing import preprocessing_config


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but could not be downloaded or found in the cache."""


def weights_cached(model_name: str) -> bool:
    """Whether the default ImageNet weights of `model_name` are already in the Hugging Face cache."""
    repo_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    return bool(repo_id) and any(isinstance(try_to_load_from_cache(repo_id, name), str)
                                 for name in ("model.safetensors", "pytorch_model.bin"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub endpoint, instead of the client's five slow retries."""
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def imagenet_backbone(model_name: str) -> nn.Module:
    """The frozen backbone with ImageNet weights, or a clear error at once when they cannot be had."""
    advice = "Check the network, or pass --no_pretrained to train from random initialisation."
    if not weights_cached(model_name) and (constants.HF_HUB_OFFLINE or not hub_reachable()):
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {model_name!r} are not in the local cache and the Hub ({constants.ENDPOINT}) "
            f"is {'disabled by HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else 'unreachable'}. {advice}")
    try:
        return frozen_backbone(model_name, pretrained=True)
    except Exception as error:  # timm and huggingface_hub raise many network and cache error types
        raise PretrainedWeightsUnavailable(
            f"Could not load ImageNet weights for {model_name!r} ({type(error).__name__}: {error}). {advice}"
        ) from error


def model_for_training(model_name: str, pretrained: bool, head_hidden_dim: int, dropout: float) -> PneumoniaClassifier:
    """A fresh model whose backbone carries ImageNet weights when `pretrained` is true."""
    model = PneumoniaClassifier(model_name, head_hidden_dim, dropout, preprocessing=preprocessing_config(model_name),
                                imagenet_weights=pretrained)
    if pretrained:
        model.backbone.load_state_dict(imagenet_backbone(model_name).state_dict())
    return model
