"""Every training option in one dataclass; the command line is generated from it, one flag per field. Options other
commands share (seed, inference batch size and workers, extraction engine, Hub token and privacy) come from
trainer/options.py, where each is declared once."""

import argparse
from dataclasses import dataclass

from .calibration import check_threshold_strategy
from .data import BUNDLED_SAMPLE
from .options import ExtractionOption, GuardOption, HubOptions, InferenceOptions, SeedOption, add_options, option


@dataclass
class TrainingConfig(SeedOption, InferenceOptions, ExtractionOption, GuardOption, HubOptions):
    # Data
    data_dir: str | None = option(None, "Kaggle-layout folder with train/ and test/ (each with NORMAL/ and PNEUMONIA/). "
                                  "Without it or --dataset_name: the small real sample bundled with the repository.")
    dataset_name: str | None = option(None, "Train from a `datasets` dataset instead of a folder: a Hub id "
                                      "(NAME/DATASET, e.g. one made by dataset_scripts.push_dataset) or a local copy. "
                                      "It needs train and test splits; its validation split is used when it has "
                                      "one, else validation is carved from train (grouped by a patient_id column "
                                      "when there is one).")
    dataset_config_name: str | None = option(None, "The dataset's configuration, if it has several.")
    image_column_name: str = option("image", "The dataset's image column.")
    label_column_name: str = option("label", "The dataset's label column (a ClassLabel of NORMAL and PNEUMONIA).")
    val_fraction: float = option(0.1, "Fraction of train/ held out for validation, grouped by patient.")
    output_dir: str = option("outputs", "Where splits.json, best/, all_results.json and plots are written.")
    overwrite_output_dir: bool = option(False, "Start afresh in an --output_dir that holds resumable states of an "
                                        "earlier run, deleting them; without it such a run stops and says how to "
                                        "continue it.")
    # Model
    model_name: str = option("resnet18", "timm backbone architecture.")
    pretrained: bool = option(True, "Start from ImageNet weights (downloaded from the Hub on first use); "
                              "--no_pretrained starts from random weights, offline.",
                              flag="--no_pretrained")
    pretrained_weights: str | None = option(None, "Read the backbone's ImageNet weights from a local file (timm or "
                                            "torchvision state_dict: .safetensors, .pth, .bin) or a folder from "
                                            "`hf download timm/resnet18.a1_in1k` instead of the Hub; never uses "
                                            "the network. Its sha256 is recorded in training_config.json.")
    head_hidden_dim: int = option(256, "Width of the head's hidden layer.")
    dropout: float = option(0.5, "Dropout before the head's output layer.")
    # Optimisation
    num_train_epochs: int = option(10, "Number of training epochs.")
    per_device_train_batch_size: int = option(32, "Training batch size per process.")
    learning_rate: float = option(1e-3, "Adam learning rate for the head.")
    weight_decay: float = option(0.0, "Adam weight decay.")
    metric_for_best_model: str = option(
        "accuracy", "Validation metric that ReduceLROnPlateau follows and that picks the best epoch (ties: lower loss): "
        "accuracy (the mission's recipe), balanced_accuracy, or loss (the class-weighted cross-entropy; smoother, "
        "the documented alternative with --lr_patience 2).",
        choices=["loss", "balanced_accuracy", "accuracy"])
    lr_patience: int = option(5, "ReduceLROnPlateau: epochs without a better validation metric before the lr drops. "
                              "5 rides out the jumps of validation accuracy in the first epochs (measured in "
                              "benchmarks/RESULTS.md), where 2 cut the lr while the head was still learning.")
    lr_factor: float = option(0.1, "ReduceLROnPlateau: factor the learning rate is multiplied by.")
    rotation_degrees: float = option(10.0, "Random rotation range (+/- degrees) for training augmentation.")
    augment: bool = option(True, "Augment training images (flip, rotation); --no_augment turns it off.",
                           flag="--no_augment")
    threshold_strategy: str = option("youden", "Decision threshold, chosen on the calibration images: youden, "
                                     "sensitivity:T (the most specific threshold whose sensitivity reaches T: a point "
                                     "estimate), sensitivity:T@C (the most specific whose Clopper-Pearson lower bound "
                                     "of sensitivity reaches T with confidence C, e.g. sensitivity:0.95@0.95) or "
                                     "fixed:V.")
    # Speed
    cache_views: int = option(3, "Feature cache: compute backbone features once, for K augmented views of each "
                              "training image (K=1: one un-augmented view); 0 decodes and runs the backbone on "
                              "every image in every epoch.")
    cache_dir: str | None = option(None, "Where cached features live (default: OUTPUT_DIR/feature_cache); "
                                   "a run with the same data, backbone and recipe reuses them.")
    # Checkpoints
    checkpoint_total_limit: int = option(2, "Resumable states kept in OUTPUT_DIR/checkpoints (one saved per epoch).")
    resume_from_checkpoint: str | None = option(None, "Continue a run: `latest` or a checkpoint folder.")
    # Hub
    push_to_hub: bool = option(False, "Push the best model, card and results to the Hub when training ends.")
    hub_model_id: str | None = option(None, "Model repo to push to, NAME/REPO.")
    report_to: str | None = option(None, "Experiment tracker for per-epoch metrics through Accelerate, e.g. "
                                   "tensorboard (logs under OUTPUT_DIR/runs; needs `pip install tensorboard`).")
    log_level: str = option("info", "info: one line per epoch and the stages; debug: also Accelerate's and the "
                            "Hub client's messages (checkpoint saving, weight loading).", choices=["info", "debug"])
    mixed_precision: str | None = option(None, "no, fp16 or bf16; default: what `accelerate launch` was configured with.",
                                         choices=["no", "fp16", "bf16"])

    def __post_init__(self):
        if self.data_dir and self.dataset_name:
            raise ValueError("--data_dir and --dataset_name name two sources of data: pass one of them.")
        if not self.dataset_name:
            self.data_dir = self.data_dir or str(BUNDLED_SAMPLE)
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"--val_fraction must be between 0 and 0.5, got {self.val_fraction}.")
        for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "head_hidden_dim",
                     "checkpoint_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        check_threshold_strategy(self.threshold_strategy)
        if self.cache_views < 0:
            raise ValueError(f"--cache_views must be 0 (no cache) or more, got {self.cache_views}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id NAME/REPO.")
        if self.pretrained_weights and not self.pretrained:
            raise ValueError("--pretrained_weights and --no_pretrained contradict each other: pass one of them.")
        if not 0 < self.guard_false_refusal < 1:
            raise ValueError(f"--guard_false_refusal must be between 0 and 1, got {self.guard_false_refusal}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}.")


def build_parser(config_class=TrainingConfig, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field; bools default-True become `--no_X`."""
    return add_options(argparse.ArgumentParser(description=description), config_class)


def parse_config(argv=None) -> TrainingConfig:
    return TrainingConfig(**vars(build_parser(description="Train the pneumonia classifier.").parse_args(argv)))
