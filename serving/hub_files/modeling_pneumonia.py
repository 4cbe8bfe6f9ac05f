"""transformers remote code for a Pneumonia Detector checkpoint: only torch, timm and transformers.

    from transformers import pipeline
    classify = pipeline("image-classification", model="NAME/REPO", trust_remote_code=True)
    classify("chest_xray.jpeg")
    # [{'label': DECISION, 'score': ..., 'probability': ...}, {'label': OTHER, ...}]
    classify("photo_of_a_cat.jpeg")
    # [{'label': 'NOT_A_CHEST_XRAY', 'score': 1.0, 'guard_distance': ..., 'guard_limit': ...}]

The weights are the same `model.safetensors` that the project's `PneumoniaClassifier` saves: a timm
backbone with frozen BatchNorm (`backbone.*`), an MLP head (`head.*`), the temperature and the decision
threshold fitted on validation, and the not-an-X-ray guard (the mean, precision and limit of the backbone's
activation statistics on the training X-rays): an image whose statistics lie beyond the limit gets the answer
NOT_A_CHEST_XRAY instead of a class, as everywhere else in the project. Preprocessing is timm's
(`PneumoniaImageProcessor`: transformers' `TimmWrapperImageProcessor`, from `pretrained_cfg` in config.json).
The pipeline (config.json's `custom_pipelines`) puts the model's answer first, as the project's app and CLI show
it. Research demo, not for clinical use.
"""

from dataclasses import dataclass

import timm
import torch
import transformers
from packaging.version import Version
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import ImageClassificationPipeline, PretrainedConfig, PreTrainedModel, TimmWrapperImageProcessor
from transformers.modeling_outputs import ImageClassifierOutput

# The transformers releases this file is tested with (the oldest and newest of the range, and the last 4.x release);
# outside the range it stops here with one sentence rather than fail later in a way that says nothing.
SUPPORTED_TRANSFORMERS = (Version("4.51.3"), Version("5.24"))
TESTED_TRANSFORMERS = "4.51.3, 4.57.6 and 5.23.0"
if not SUPPORTED_TRANSFORMERS[0] <= Version(transformers.__version__) < SUPPORTED_TRANSFORMERS[1]:
    raise ImportError(
        f"This Pneumonia Detector model needs transformers >={SUPPORTED_TRANSFORMERS[0]},<{SUPPORTED_TRANSFORMERS[1]} "
        f"(tested with {TESTED_TRANSFORMERS}), not {transformers.__version__}: "
        f"pip install 'transformers>={SUPPORTED_TRANSFORMERS[0]},<{SUPPORTED_TRANSFORMERS[1]}'.")

# Copies of the project's definitions (serving/labels.py, serving/guard.py): this file runs without the project.
LABELS = ("NORMAL", "PNEUMONIA")
POSITIVE = "PNEUMONIA"  # the class the decision threshold is set on
NOT_A_CHEST_XRAY = "NOT_A_CHEST_XRAY"  # the answer for an image the guard refuses
GUARD_STAGES = 4


def with_frozen_batch_norm(module: nn.Module) -> nn.Module:
    """timm.utils.freeze's layout (FrozenBatchNorm2d for each BatchNorm2d, no gradients) without copying any tensor:
    transformers 4 builds the model on the meta device, where a copy fails, and every value comes from the weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            with_frozen_batch_norm(child)
    return module.requires_grad_(False)


def stage_statistics(stages: list[torch.Tensor]) -> torch.Tensor:
    """(N, 2 * channels): per-channel spatial mean and standard deviation of each stage's activations."""
    return torch.cat([s.mean(dim=(2, 3)) for s in stages] + [s.std(dim=(2, 3)) for s in stages], dim=1)


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Distance of each row of `features` (N, D) from the fitted distribution, in float64."""
    centred = features.double() - mean.double()
    return torch.einsum("nd,de,ne->n", centred, precision.double(), centred).clamp_min(0).sqrt()


@dataclass
class PneumoniaClassifierOutput(ImageClassifierOutput):
    """Calibrated logits and each image's not-an-X-ray guard distance (float64)."""

    guard_distance: torch.Tensor | None = None


class PneumoniaConfig(PretrainedConfig):
    model_type = "pneumonia_classifier"

    def __init__(self, model_name="resnet18", head_hidden_dim=256, dropout=0.5, labels=LABELS,
                 num_features=512, **kwargs):
        kwargs.setdefault("id2label", dict(enumerate(labels)))
        kwargs.setdefault("label2id", {label: i for i, label in enumerate(labels)})
        super().__init__(**kwargs)
        self.model_name = model_name
        self.head_hidden_dim = head_hidden_dim
        self.dropout = dropout
        self.labels = list(labels)
        self.num_features = num_features


class PneumoniaImageProcessor(TimmWrapperImageProcessor):
    """timm's eval transform from config.json's `pretrained_cfg`, as transformers' TimmWrapperImageProcessor applies it.
    Named through `auto_map` rather than `image_processor_type`: transformers would look for a torchvision variant of
    its stock class, find none and warn on every load."""


class PneumoniaForImageClassification(PreTrainedModel):
    config_class = PneumoniaConfig
    main_input_name = "pixel_values"

    def __init__(self, config: PneumoniaConfig):
        super().__init__(config)
        # the module layout (FrozenBatchNorm2d) of the saved weights
        self.backbone = with_frozen_batch_norm(timm.create_model(config.model_name, pretrained=False, num_classes=0))
        self.head = nn.Sequential(
            nn.Linear(config.num_features, config.head_hidden_dim),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden_dim, len(config.labels)),
        )
        # Calibration (logits are divided by it) and the decision threshold, fitted on validation.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("decision_threshold", torch.tensor(0.5))
        # The not-an-X-ray guard, fitted after training (inf: a model saved before fitting accepts every image).
        statistics = 2 * sum(info["num_chs"] for info in self.backbone.feature_info[-GUARD_STAGES:])
        self.register_buffer("guard_mean", torch.zeros(statistics))
        self.register_buffer("guard_precision", torch.zeros(statistics, statistics, dtype=torch.float64))
        self.register_buffer("guard_threshold", torch.tensor(float("inf")))
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def forward(self, pixel_values, labels=None, **kwargs):
        """Calibrated logits (softmax gives the calibrated probabilities) and the guard's distance of each image."""
        final, stages = self.backbone.forward_intermediates(pixel_values, indices=GUARD_STAGES)
        logits = self.head(self.backbone.forward_head(final)) / self.temperature
        distance = mahalanobis(stage_statistics(stages), self.guard_mean, self.guard_precision)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return PneumoniaClassifierOutput(loss=loss, logits=logits, guard_distance=distance)


class PneumoniaClassificationPipeline(ImageClassificationPipeline):
    """image-classification that answers with the model's decision at its threshold first, or that the image is not
    a chest X-ray: then the one entry {"label": "NOT_A_CHEST_XRAY", "score": 1.0, "guard_distance", "guard_limit"}.

    Otherwise each entry is {"label", "score", "probability"}. `probability` is the calibrated probability of the
    label. `score` is the PNEUMONIA probability re-centred on the decision threshold t,
    sigmoid(logit(p) - logit(t)) (one minus that for NORMAL): 0.5 exactly at the threshold, so the
    decided label scores highest and comes first, as the project's app and CLI decide.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.image_processor is None:  # transformers 4 loads none for a remote-code config; 5 loads this one
            self.image_processor = PneumoniaImageProcessor(pretrained_cfg=self.model.config.pretrained_cfg)

    def postprocess(self, model_outputs, top_k=None, **kwargs):
        distance, limit = model_outputs["guard_distance"][0].item(), self.model.guard_threshold.item()
        if not distance <= limit:
            return [{"label": NOT_A_CHEST_XRAY, "score": 1.0, "guard_distance": distance, "guard_limit": limit}]
        logits = model_outputs["logits"][0].float()  # calibrated: already divided by the temperature
        labels = [self.model.config.id2label[i] for i in range(len(logits))]
        positive = labels.index(POSITIVE)
        probabilities = logits.softmax(dim=-1)
        threshold = self.model.decision_threshold.float()
        log_odds = 2 * logits[positive] - logits.sum()  # logit(p) for two classes
        centred = torch.sigmoid(log_odds - torch.logit(threshold.clamp(1e-6, 1 - 1e-6))).item()
        decided = POSITIVE if probabilities[positive] >= threshold else labels[1 - positive]
        results = [{"label": label, "score": centred if label == POSITIVE else 1 - centred,
                    "probability": probabilities[i].item()} for i, label in enumerate(labels)]
        results.sort(key=lambda result: result["label"] != decided)
        return results[:top_k] if top_k else results
