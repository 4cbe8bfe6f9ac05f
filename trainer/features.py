"""Backbone features of a whole data split: for fitting the not-an-X-ray guard."""

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm


@torch.inference_mode()
def extract_features(model, loader, accelerator: Accelerator, description: str = "features") -> np.ndarray:
    """Pooled backbone features (N, D) of every sample once, in loader order, gathered across processes."""
    backbone_model = accelerator.unwrap_model(model).eval()
    chunks = []
    for batch in tqdm(loader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        features = backbone_model.forward_features(batch["pixel_values"]).float()
        chunks.append(accelerator.gather_for_metrics(features).cpu())
    return torch.cat(chunks).numpy()
