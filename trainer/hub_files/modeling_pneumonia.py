"""transformers remote code for a Pneumonia Detector checkpoint: only torch, timm and transformers.

    from transformers import pipeline
    classify = pipeline("image-classification", model="NAME/REPO", trust_remote_code=True)

The weights are the same `model.safetensors` that `trainer.PneumoniaClassifier` saves: a timm
backbone with frozen BatchNorm (`backbone.*`) and an MLP head (`head.*`). Preprocessing is timm's
(`TimmWrapperImageProcessor`, from `pretrained_cfg` in config.json). Research demo, not for clinical use.
"""

import timm
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput


class PneumoniaConfig(PretrainedConfig):
    model_type = "pneumonia_classifier"

    def __init__(self, model_name="resnet18", head_hidden_dim=256, dropout=0.5, labels=("NORMAL", "PNEUMONIA"),
                 num_features=512, **kwargs):
        kwargs.setdefault("id2label", dict(enumerate(labels)))
        kwargs.setdefault("label2id", {label: i for i, label in enumerate(labels)})
        super().__init__(**kwargs)
        self.model_name = model_name
        self.head_hidden_dim = head_hidden_dim
        self.dropout = dropout
        self.labels = list(labels)
        self.num_features = num_features


class PneumoniaForImageClassification(PreTrainedModel):
    config_class = PneumoniaConfig
    main_input_name = "pixel_values"

    def __init__(self, config: PneumoniaConfig):
        super().__init__(config)
        self.backbone = timm.create_model(config.model_name, pretrained=False, num_classes=0)
        timm.utils.freeze(self.backbone)  # same module layout (FrozenBatchNorm2d) as the saved weights
        self.head = nn.Sequential(
            nn.Linear(config.num_features, config.head_hidden_dim),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden_dim, len(config.labels)),
        )
        # Calibration (logits are divided by it) and the decision threshold, fitted on validation.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("decision_threshold", torch.tensor(0.5))
        # The app's not-an-X-ray guard lives in the same weights; unused here.
        statistics = 2 * sum(info["num_chs"] for info in self.backbone.feature_info[-4:])
        self.register_buffer("guard_mean", torch.zeros(statistics))
        self.register_buffer("guard_precision", torch.zeros(statistics, statistics, dtype=torch.float64))
        self.register_buffer("guard_threshold", torch.tensor(float("inf")))
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def forward(self, pixel_values, labels=None, **kwargs):
        logits = self.head(self.backbone(pixel_values)) / self.temperature
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)
