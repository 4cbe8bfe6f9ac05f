"""Train the head of a frozen-backbone classifier with Accelerate, keep the best epoch, evaluate on test.

    accelerate launch -m trainer --data_dir path/to/chest_xray --output_dir outputs/run1
"""

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from sklearn.metrics import accuracy_score
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import TrainingConfig, parse_config
from .data import CLASS_NAMES, load_chest_xray, make_loader, split_by_patient, split_manifest
from .evaluation import evaluate_on_test, plot_confusion_matrix, results_table, write_json
from .feature_guard import fit_feature_guard
from .features import CachedViews, cached_features, extract_features
from .model import PneumoniaClassifier
from .preprocessing import eval_transform, train_transform
from .push import push_run

logger = get_logger(__name__)


def class_weighted_loss(train_labels: list[int]) -> torch.nn.CrossEntropyLoss:
    """Cross-entropy weighted by inverse class frequency of the training split ("balanced")."""
    weights = compute_class_weight("balanced", classes=np.arange(len(CLASS_NAMES)), y=np.array(train_labels))
    return torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))


def build_optimizer(model: PneumoniaClassifier, config: TrainingConfig) -> torch.optim.Adam:
    """Adam over the head only: the backbone is frozen."""
    return torch.optim.Adam(model.head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def build_scheduler(optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Lower the lr when validation accuracy stops rising. Stepped by hand once per epoch with that
    accuracy (accelerate's scheduler wrapper would step it once per process)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_factor,
                                                      patience=config.lr_patience)


def model_inputs(batch: dict) -> dict:
    """A batch minus its labels: {"pixel_values"} from images or {"features"} from the feature cache."""
    return {key: value for key, value in batch.items() if key != "labels"}


def train_one_epoch(model, loader, criterion, optimizer, accelerator: Accelerator, epoch: int) -> float:
    """One pass over the training loader; returns the mean training loss across processes."""
    model.train()
    losses = []
    for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False):
        loss = criterion(model(**model_inputs(batch)), batch["labels"])
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.gather(loss.detach()).mean().item())
    return float(np.mean(losses))


@torch.inference_mode()
def validate(model, loader, criterion, accelerator: Accelerator) -> dict[str, float]:
    """Validation loss (same class-weighted criterion) and accuracy, every sample counted once."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        logits, labels = accelerator.gather_for_metrics((model(**model_inputs(batch)).float(), batch["labels"]))
        all_logits.append(logits)
        all_labels.append(labels)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    return {"loss": criterion(logits, labels).item(),
            "accuracy": accuracy_score(labels.cpu().numpy(), logits.argmax(dim=-1).cpu().numpy())}


def is_better(val: dict, best: dict | None) -> bool:
    """Best by validation accuracy; ties go to the lower validation loss."""
    return best is None or (val["accuracy"], -val["loss"]) > (best["accuracy"], -best["loss"])


def image_loaders(config: TrainingConfig, model, splits: dict) -> tuple[DataLoader, DataLoader, None]:
    """Decode and transform images every epoch (`--cache_views 0`)."""
    augmentation = train_transform(model.preprocessing, config.rotation_degrees) if config.augment \
        else eval_transform(model.preprocessing)
    train_loader = make_loader(splits["train"], augmentation, config.per_device_train_batch_size, True,
                               config.num_workers)
    val_loader = make_loader(splits["validation"], eval_transform(model.preprocessing),
                             config.per_device_eval_batch_size, False, config.num_workers)
    return train_loader, val_loader, None


def feature_cache_dir(config: TrainingConfig, output_dir: Path) -> Path:
    return Path(config.cache_dir) if config.cache_dir else output_dir / "feature_cache"


def feature_loaders(config: TrainingConfig, accelerator: Accelerator, model, splits: dict,
                    output_dir: Path) -> tuple[DataLoader, DataLoader, CachedViews]:
    """Backbone features computed once (`--cache_views K`), one view per image per epoch."""
    cache_dir = feature_cache_dir(config, output_dir)
    train_set = CachedViews(cached_features(model, splits["train"], "train", config.cache_views, config,
                                            accelerator, cache_dir), splits["train"]["label"], config.seed)
    val_set = CachedViews(cached_features(model, splits["validation"], "validation", 1, config, accelerator,
                                          cache_dir), splits["validation"]["label"], config.seed)
    return (DataLoader(train_set, batch_size=config.per_device_train_batch_size, shuffle=True),
            DataLoader(val_set, batch_size=config.per_device_eval_batch_size), train_set)


def train(config: TrainingConfig, accelerator: Accelerator, model, splits: dict, output_dir: Path) -> dict:
    """Train the head, saving the best epoch to output_dir/best/. Returns the best epoch's record."""
    train_loader, val_loader, cached_train = (feature_loaders(config, accelerator, model, splits, output_dir)
                                              if config.cache_views else image_loaders(config, model, splits))
    criterion = class_weighted_loss(splits["train"]["label"]).to(accelerator.device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

    set_seed(config.seed)  # the same shuffles and dropout masks whichever path computed the inputs
    best, history = None, []
    for epoch in range(1, config.num_train_epochs + 1):
        started = time.perf_counter()
        if cached_train is not None:
            cached_train.choose_views(epoch)
        train_loss = train_one_epoch(model, train_loader, criterion, optimizer, accelerator, epoch)
        val = validate(model, val_loader, criterion, accelerator)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        scheduler.step(val["accuracy"])
        history.append(record)
        logger.info("epoch %d: train_loss %.4f  val_loss %.4f  val_accuracy %.4f  lr %.2e  (%.0fs)", epoch,
                    train_loss, val["loss"], val["accuracy"], record["lr"], record["seconds"])
        if is_better(val, best):
            best = {**val, "epoch": epoch}
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(output_dir / "best")
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json({"history": history}, output_dir / "training_history.json")
    return best


def fit_guard(config: TrainingConfig, accelerator: Accelerator, splits: dict, output_dir: Path) -> float:
    """Fit the not-an-X-ray guard on un-augmented train/validation features; save it into best/."""
    best_dir = output_dir / "best"
    model = PneumoniaClassifier.from_pretrained(best_dir)
    if config.cache_views:  # the backbone is unchanged, so these are cache hits (view 0 is un-augmented)
        train_features, val_features = (
            cached_features(model, splits[name], name, views, config, accelerator, feature_cache_dir(config, output_dir))[0]
            for name, views in (("train", config.cache_views), ("validation", 1)))
    else:
        model.to(accelerator.device)
        train_features, val_features = (
            extract_features(model, accelerator.prepare(make_loader(splits[name], eval_transform(model.preprocessing),
                             config.per_device_eval_batch_size, False, config.num_workers)), accelerator)
            for name in ("train", "validation"))
    guard = fit_feature_guard(np.asarray(train_features), np.asarray(val_features))
    if accelerator.is_main_process:
        model.set_feature_guard(**guard)
        model.save_pretrained(best_dir)
    accelerator.wait_for_everyone()
    return float(guard["threshold"])


def main(argv=None) -> dict:
    """Run every stage; returns what was written to output_dir/all_results.json."""
    config = parse_config(argv)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    output_dir = Path(config.output_dir)
    set_seed(config.seed)
    started = time.perf_counter()

    # Load and check the data before spending time on anything else
    data = load_chest_xray(config.data_dir)
    train_split, val_split = split_by_patient(data["train"], config.val_fraction, config.seed)
    splits = {"train": train_split, "validation": val_split, "test": data["test"]}
    logger.info("split sizes: %s", {name: len(part) for name, part in splits.items()})
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(split_manifest(splits, config.val_fraction, config.seed), output_dir / "splits.json")
        write_json({k: v for k, v in asdict(config).items() if k != "hub_token"}, output_dir / "training_config.json")

    # Build the model
    model = PneumoniaClassifier.for_training(config.model_name, config.pretrained, config.head_hidden_dim, config.dropout)

    # Train!
    best = train(config, accelerator, model, splits, output_dir)

    # Fit the not-an-X-ray guard to the training images' features
    guard_threshold = fit_guard(config, accelerator, splits, output_dir)

    # Evaluate the best model on the untouched test set
    results = evaluate_on_test(accelerator, output_dir / "best", splits["test"], Path(config.data_dir) / "test",
                               output_dir, config.per_device_eval_batch_size, config.num_workers)
    results |= {"best_epoch": best["epoch"], "best_val_accuracy": best["accuracy"], "best_val_loss": best["loss"],
                "imagenet_weights": config.pretrained, "model_name": config.model_name,
                "num_train_epochs": config.num_train_epochs, "train_samples": len(train_split),
                "validation_samples": len(val_split), "train_runtime_seconds": time.perf_counter() - started,
                "train_class_weights": class_weighted_loss(train_split["label"]).weight.tolist(),
                "feature_guard_threshold": guard_threshold}
    if accelerator.is_main_process:
        write_json(results, output_dir / "all_results.json")
        plot_confusion_matrix(results["test_confusion_matrix"], results["test_confusion_matrix_labels"],
                              output_dir / "confusion_matrix.png", f"Test set (n={results['test_samples']})")
    accelerator.print(results_table(results))
    accelerator.end_training()

    # Push last: a failed push raises PushError with everything above already saved
    if config.push_to_hub and accelerator.is_main_process:
        commit = push_run(output_dir, config.hub_model_id, config.hub_token, config.hub_private_repo)
        logger.info("pushed to %s", commit.commit_url)
    return results
