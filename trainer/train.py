"""Train the head of a frozen-backbone classifier with Accelerate, keep the best epoch, evaluate on test.

    accelerate launch -m trainer --data_dir path/to/chest_xray --output_dir outputs/run1
"""

import copy
import itertools
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast_object_list, set_seed
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from serving.labels import LABELS

from .calibration import fit_operating_point
from .checkpointing import (
    StopOnSignal,
    TrainingInterrupted,
    TrainingProgress,
    check_output_dir,
    next_checkpoint_number,
    resolve_checkpoint,
    save_resumable_state,
    use_lean_states,
)
from .config import TrainingConfig, parse_config
from .cross_fit import CROSS_FIT_FOLDS, SMALL_VALIDATION, cross_fitted_distances, cross_fitted_logits, folds
from .data import PATIENT_COLUMN, load_training_data, make_loader, make_splits, split_manifest, train_transform
from .evaluation import evaluate_on_test, head_logits, results_table, write_json
from .feature_guard import GUARD_FIT_IMAGES, fit_feature_guard
from .features import CachedViews, Extractor, cached_features, resolve_engine
from .model import PneumoniaClassifier, imagenet_weights_from_hub, model_for_training, sha256, weights_file
from .model_card import write_model_card
from .push import push_run
from .report import plot_confusion_matrix, plot_training_curves
from .threads import use_available_cores

logger = get_logger(__name__)


def class_weighted_loss(train_labels: list[int]) -> torch.nn.CrossEntropyLoss:
    """Cross-entropy weighted by inverse class frequency of the training split ("balanced")."""
    weights = compute_class_weight("balanced", classes=np.arange(len(LABELS)), y=np.array(train_labels))
    return torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))


def build_optimizer(model: PneumoniaClassifier, config: TrainingConfig) -> torch.optim.Adam:
    """Adam over the head only: the backbone is frozen."""
    return torch.optim.Adam(model.head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def greater_is_better(metric: str) -> bool:
    """Accuracies rise as the head improves; the loss falls."""
    return metric != "loss"


def build_scheduler(optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Lower the lr when the validation metric (`--metric_for_best_model`) stops improving. Stepped by hand once
    per epoch with that metric (accelerate's scheduler wrapper would step it once per process)."""
    mode = "max" if greater_is_better(config.metric_for_best_model) else "min"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=config.lr_factor,
                                                      patience=config.lr_patience)


def model_inputs(batch: dict) -> dict:
    """A batch minus its labels: {"pixel_values"} from images or {"features"} from the feature cache."""
    return {key: value for key, value in batch.items() if key != "labels"}


def train_one_epoch(model, batches, criterion, optimizer, accelerator: Accelerator, progress: TrainingProgress,
                    stop: StopOnSignal) -> bool:
    """Train on `batches` (the rest of this epoch), adding to progress.epoch_sums and progress.step.

    Returns False when a stop signal arrived (seen by any process); the batch in flight is finished first.
    """
    model.train()
    sums = progress.epoch_sums
    for batch in tqdm(batches, desc=f"epoch {progress.epoch + 1}", disable=not accelerator.is_local_main_process,
                      leave=False):
        logits = model(**model_inputs(batch))
        loss = criterion(logits, batch["labels"])
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        counts = torch.stack([loss.detach() * len(logits), (logits.argmax(-1) == batch["labels"]).sum(),
                              torch.tensor(len(logits), device=logits.device), torch.tensor(stop.requested,
                              device=logits.device)]).float().reshape(1, 4)
        totals = accelerator.gather(counts).sum(dim=0)
        sums["losses"].append(totals[0].item() / totals[2].item())
        sums["correct"] += int(totals[1].item())
        sums["seen"] += int(totals[2].item())
        progress.step += 1
        if totals[3] > 0:
            return False
    return True


def epoch_batches(loader, progress: TrainingProgress):
    """An iterator over this epoch's batches, replaying an interrupted epoch exactly.

    The shuffle depends only on (seed, epoch) (seedable sampler). Starting an iterator also draws the
    DataLoader's base seed from the torch RNG, so a resumed epoch starts it from the RNG state the
    epoch began with, then returns to the state saved at the interruption. Exact for the feature
    cache; with --cache_views 0 and augmentation in the main process (num_workers 0), the
    augmentation of the batch prefetched at the interruption is drawn again, so the rest of the
    epoch matches in distribution, not bit for bit.
    """
    if progress.step == 0:
        progress.epoch_rng = torch.get_rng_state()
        loader.set_epoch(progress.epoch)
        return iter(loader)
    interrupted_rng = torch.get_rng_state()
    torch.set_rng_state(progress.epoch_rng)
    skipping = skip_first_batches(loader, progress.step)
    skipping.set_epoch(progress.epoch)  # a skipping loader is new: it must be told the epoch too
    batches = iter(skipping)
    first = next(batches, None)  # the iterator only starts (and draws its seed) at the first batch
    torch.set_rng_state(interrupted_rng)
    return itertools.chain([] if first is None else [first], batches)


@torch.inference_mode()
def validate(model, loader, criterion, accelerator: Accelerator) -> dict[str, float]:
    """Validation loss (same class-weighted criterion), accuracy and balanced accuracy, every sample counted once."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        logits, labels = accelerator.gather_for_metrics((model(**model_inputs(batch)).float(), batch["labels"]))
        all_logits.append(logits)
        all_labels.append(labels)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    labels_np, predictions = labels.cpu().numpy(), logits.argmax(dim=-1).cpu().numpy()
    return {"loss": criterion(logits, labels).item(), "accuracy": accuracy_score(labels_np, predictions),
            "balanced_accuracy": balanced_accuracy_score(labels_np, predictions)}


def is_better(val: dict, best: dict | None, metric: str) -> bool:
    """Best by the validation `metric` (lowest loss, or highest accuracy); ties go to the lower validation loss."""
    def rank(scores: dict) -> tuple[float, float]:
        return (scores[metric] if greater_is_better(metric) else -scores[metric], -scores["loss"])
    return best is None or rank(val) > rank(best)


def eval_loader(config: TrainingConfig, model, split) -> DataLoader:
    return make_loader(split, model.transform, config.per_device_eval_batch_size, False,
                       config.num_workers)


def training_transform(config: TrainingConfig, model, augment: bool):
    """The training images' transform: the mission's augmentation (flip, rotation) or none."""
    return (train_transform(model.preprocessing, config.rotation_degrees) if augment
            else model.transform)


def image_loaders(config: TrainingConfig, model, splits: dict) -> tuple[DataLoader, DataLoader, None]:
    """Decode and transform images every epoch (`--cache_views 0`)."""
    train_loader = make_loader(splits["train"], training_transform(config, model, config.augment),
                               config.per_device_train_batch_size, True, config.num_workers)
    return train_loader, eval_loader(config, model, splits["validation"]), None


def feature_cache_dir(config: TrainingConfig, output_dir: Path) -> Path:
    return Path(config.cache_dir) if config.cache_dir else output_dir / "feature_cache"


def feature_loaders(config: TrainingConfig, accelerator: Accelerator, model, splits: dict,
                    output_dir: Path) -> tuple[DataLoader, DataLoader, CachedViews, dict]:
    """Backbone features computed once (`--cache_views K`), one view per image per epoch; also returns the cached
    outputs ({"train", "validation", "guard"} -> features and guard statistics) for fitting the guard after
    training: of the validation images, and of un-augmented training images (the un-augmented view when there
    is one, else one more cached pass over up to GUARD_FIT_IMAGES of them)."""
    cache_dir = feature_cache_dir(config, output_dir)
    extractor = Extractor(model, resolve_engine(config.extraction_engine, accelerator))
    augment = config.augment and config.cache_views > 1  # K=1: one un-augmented view
    cached = {"train": cached_features(splits["train"], "train", config.cache_views if augment else 1,
                                       training_transform(config, model, augment), config, accelerator, cache_dir,
                                       extractor),
              "validation": cached_features(splits["validation"], "validation", 1, model.transform, config,
                                            accelerator, cache_dir, extractor)}
    guard_images = guard_sample(len(splits["train"]), config.seed)
    # The guard is fitted on un-augmented X-rays: statistics of augmented views let 2 of the 35 non-X-rays through
    cached["guard"] = (cached_features(splits["train"].select(guard_images), "guard", 1, model.transform, config,
                                       accelerator, cache_dir, extractor) if augment
                       else {"features": cached["train"]["features"][:, guard_images],
                             "statistics": cached["train"]["statistics"][guard_images]})
    train_set = CachedViews(cached["train"]["features"], splits["train"]["label"], config.seed)
    val_set = CachedViews(cached["validation"]["features"], splits["validation"]["label"], config.seed)
    return (DataLoader(train_set, batch_size=config.per_device_train_batch_size, shuffle=True),
            DataLoader(val_set, batch_size=config.per_device_eval_batch_size), train_set, cached)


def train(config: TrainingConfig, accelerator: Accelerator, model, splits: dict,
          output_dir: Path) -> tuple[dict, dict | None]:
    """Train the head, saving the best epoch to output_dir/best/ and a resumable state every epoch.

    Returns the best epoch's record and, with the feature cache, the cached splits (None with --cache_views 0).
    Raises TrainingInterrupted after saving state on SIGTERM/SIGINT.
    """
    train_loader, val_loader, cached_train, cached = (
        feature_loaders(config, accelerator, model, splits, output_dir) if config.cache_views
        else (*image_loaders(config, model, splits), None))
    criterion = class_weighted_loss(splits["train"]["label"]).to(accelerator.device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(scheduler, progress)
    use_lean_states(accelerator)

    set_seed(config.seed)  # the same dropout masks whichever path computed the inputs
    if config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
        accelerator.load_state(checkpoint, strict=False)  # the frozen backbone is not in it (use_lean_states)
        accelerator.project_configuration.iteration = next_checkpoint_number(output_dir)
        logger.info("resumed from %s at epoch %d, batch %d", checkpoint, progress.epoch + 1, progress.step)

    with StopOnSignal() as stop:
        while progress.epoch < config.num_train_epochs:
            started = time.perf_counter()
            if cached_train is not None:
                cached_train.choose_views(progress.epoch + 1)
            if not train_one_epoch(model, epoch_batches(train_loader, progress), criterion, optimizer, accelerator,
                                   progress, stop):
                save_resumable_state(accelerator, output_dir, config.checkpoint_total_limit)
                raise TrainingInterrupted(
                    f"Stopped by a signal in epoch {progress.epoch + 1} after {progress.step} batches; a resumable "
                    f"state is in {output_dir / 'checkpoints'}. Continue with the same command plus "
                    "--resume_from_checkpoint latest.")
            finish_epoch(config, accelerator, model, val_loader, criterion, optimizer, scheduler, progress,
                         time.perf_counter() - started)
            save_resumable_state(accelerator, output_dir, config.checkpoint_total_limit)
    if accelerator.is_main_process:
        save_best_model(accelerator.unwrap_model(model), progress.best_head, output_dir)
        write_json({"history": progress.history}, output_dir / "training_history.json")
        plot_training_curves(progress.history, output_dir / "training_curves.png")
    accelerator.wait_for_everyone()
    return progress.best, cached


def save_best_model(model, best_head: dict, output_dir: Path) -> None:
    """Write output_dir/best/: the model with the best epoch's head weights (kept in memory and in every
    resumable state, so best/ is written once, when training ends)."""
    best = copy.deepcopy(model)
    best.head.load_state_dict(best_head)
    best.save_pretrained(output_dir / "best")


def finish_epoch(config, accelerator, model, val_loader, criterion, optimizer, scheduler, progress: TrainingProgress,
                 seconds: float) -> None:
    """Validate, step the scheduler, log, keep the best model and move progress to the next epoch."""
    val = validate(model, val_loader, criterion, accelerator)
    sums = progress.epoch_sums
    record = {"epoch": progress.epoch + 1, "train_loss": float(np.mean(sums["losses"])),
              "train_accuracy": sums["correct"] / sums["seen"], "val_loss": val["loss"],
              "val_accuracy": val["accuracy"], "val_balanced_accuracy": val["balanced_accuracy"],
              "lr": optimizer.param_groups[0]["lr"], "seconds": seconds}
    scheduler.step(val[config.metric_for_best_model])
    progress.history.append(record)
    accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
    logger.info("epoch %d: train_loss %.4f  val_loss %.4f  val_accuracy %.4f  val_balanced_accuracy %.4f  lr %.2e  "
                "(%.0fs)", record["epoch"], record["train_loss"], val["loss"], val["accuracy"],
                val["balanced_accuracy"], record["lr"], seconds)
    if is_better(val, progress.best, config.metric_for_best_model):
        progress.best = {**val, "epoch": record["epoch"]}
        progress.best_head = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).head.state_dict().items()}
    progress.epoch, progress.step = progress.epoch + 1, 0
    progress.epoch_sums = {"losses": [], "correct": 0, "seen": 0}


def guard_sample(train_images: int, seed: int) -> np.ndarray:
    """Which training images (up to GUARD_FIT_IMAGES, a seeded random choice) the guard is fitted on."""
    return np.random.default_rng(seed).permutation(train_images)[:GUARD_FIT_IMAGES]


def finalise_best_model(config: TrainingConfig, accelerator: Accelerator, splits: dict, output_dir: Path,
                        cached: dict | None = None, best_epoch: int = 1) -> dict:
    """Fit, on train/validation only, the not-an-X-ray guard, the temperature and the decision threshold;
    save them into best/ and return them with what they guarantee. The backbone's outputs come from the feature
    cache when there is one (`cached`), else from one more pass over the images. A small validation split is joined
    by cross-fitted scores of the training images (trainer/cross_fit.py)."""
    best_dir = output_dir / "best"
    model = PneumoniaClassifier.from_pretrained(best_dir).eval().to(accelerator.device)
    guard_images = guard_sample(len(splits["train"]), config.seed)
    if cached is None:
        extract = Extractor(model, resolve_engine(config.extraction_engine, accelerator))
        guard_features, train_statistics = extract(
            accelerator.prepare(eval_loader(config, model, splits["train"].select(guard_images))), accelerator,
            "guard statistics")
        val_features, val_statistics = extract(accelerator.prepare(eval_loader(config, model, splits["validation"])),
                                               accelerator, "validation features and guard statistics")
        train_views = torch.from_numpy(guard_features)[None]
    else:
        train_statistics = cached["guard"]["statistics"].numpy()
        guard_features = cached["guard"]["features"][0].numpy()
        train_views = cached["train"]["features"][:, guard_images]
        val_features = cached["validation"]["features"][0].numpy()
        val_statistics = cached["validation"]["statistics"].numpy()
    val_labels = np.array(splits["validation"]["label"])
    logits, labels = head_logits(model, val_features, accelerator), val_labels
    cross_fitted, calibration = None, {"validation_images": len(val_labels), "cross_fitted_training_images": 0}
    if len(val_labels) < SMALL_VALIDATION:
        train_labels = np.array(splits["train"]["label"])[guard_images]
        train = splits["train"]
        patients = ([train[PATIENT_COLUMN][i] for i in guard_images] if PATIENT_COLUMN in train.column_names
                    else list(range(len(guard_images))))
        fold_indices = folds(train_labels, patients, config.seed)
        found = [None, None]
        if accelerator.is_main_process:  # computed once (a few seconds of head training on cached features)
            found = [cross_fitted_logits(model.head, train_views, torch.from_numpy(guard_features), train_labels,
                                         fold_indices, class_weighted_loss(train_labels), config, best_epoch),
                     cross_fitted_distances(train_statistics, fold_indices)]
        oof_logits, cross_fitted = broadcast_object_list(found)
        logits, labels = torch.cat([logits, oof_logits]), np.concatenate([val_labels, train_labels])
        calibration["cross_fitted_training_images"] = len(train_labels)
    calibration["rule"] = (f"validation images below {SMALL_VALIDATION}: the temperature, threshold and guard limit "
                           f"are fitted on the validation images and on every training image scored by "
                           f"{CROSS_FIT_FOLDS}-fold cross-fitting (a head and a guard fitted without its fold, grouped "
                           "by patient)" if cross_fitted is not None else
                           f"validation images {SMALL_VALIDATION} or more: the temperature, threshold and guard limit "
                           "are fitted on the validation images only")
    guard, guard_guarantee, guard_distances = fit_feature_guard(train_statistics, val_statistics,
                                                                config.guard_false_refusal, cross_fitted)
    temperature, threshold, bound = fit_operating_point(logits, labels, config.threshold_strategy)
    logger.info("not-an-X-ray guard: limit %.2f from %d calibration X-rays, refusing at most %.3g of X-rays like them "
                "(asked %.3g)", float(guard["threshold"]), guard_guarantee["guard_calibration_images"],
                guard_guarantee["guard_false_refusal_achievable"], config.guard_false_refusal)
    if bound is not None:
        logger.info("threshold %.4f (%s): %s", threshold, config.threshold_strategy, bound.sentence())
    if accelerator.is_main_process:
        model.set_feature_guard(**guard)
        model.set_operating_point(temperature, threshold)
        model.save_pretrained(best_dir)
        manifest = json.loads((output_dir / "splits.json").read_text())
        # the distances let the limit for another --guard_false_refusal be read off without retraining
        distances = sorted(round(float(distance), 4) for distance in guard_distances)
        write_json(manifest | {"calibration": calibration | {"guard_distances": distances}}, output_dir / "splits.json")
    accelerator.wait_for_everyone()
    return {"feature_guard_threshold": float(guard["threshold"]), "temperature": temperature,
            "decision_threshold": threshold, "threshold_strategy": config.threshold_strategy,
            "calibration": calibration, **guard_guarantee, **(bound.results() if bound else {})}


def set_verbosity(log_level: str) -> None:
    """`info`: the trainer's own lines (one per epoch); `debug`: also the libraries' chatter (Accelerate's
    checkpoint saving, ~15 lines an epoch, the Hub client's weight loading, the ONNX exporter's ~47 passes)."""
    for library in ("accelerate", "huggingface_hub", "onnx_ir", "onnxscript"):
        logging.getLogger(library).setLevel(logging.DEBUG if log_level == "debug" else logging.WARNING)


def main(argv=None) -> dict:
    """Run every stage; returns what was written to output_dir/all_results.json."""
    config = parse_config(argv)
    check_output_dir(Path(config.output_dir), bool(config.resume_from_checkpoint), config.overwrite_output_dir)
    if config.resume_from_checkpoint:
        resolve_checkpoint(config.resume_from_checkpoint, Path(config.output_dir))  # a wrong path fails now, not later
    set_verbosity(config.log_level)
    use_available_cores()
    # ImageNet weights first: offline or unreachable, the run stops here, before any data is read
    hub_weights = imagenet_weights_from_hub(config.model_name) if config.pretrained and not config.pretrained_weights else None
    weights = (weights_file(config.pretrained_weights, config.model_name) if config.pretrained_weights
               else hub_weights.path if hub_weights else None)
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "runs"),
                                   automatic_checkpoint_naming=True)  # rotation: save_resumable_state
    # Seedable sampler: epoch e's shuffle depends on (seed, e) only, so a resumed run replays it exactly. data_seed
    # pins it: by default Accelerate takes torch's initial seed at prepare(), which feature extraction moves (one
    # set_seed per view), so a run on a warm feature cache would shuffle differently from the run that built it.
    accelerator = Accelerator(mixed_precision=config.mixed_precision, project_config=project,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                        data_seed=config.seed),
                              log_with=config.report_to)
    output_dir = Path(config.output_dir)
    set_seed(config.seed)
    started = time.perf_counter()

    # Load and check the data before spending time on anything else
    data = load_training_data(config)
    splits, split_procedure = make_splits(data, config.val_fraction, config.seed, config.dataset_name)
    train_split, val_split = splits["train"], splits["validation"]
    logger.info("split sizes: %s (%s)", {name: len(part) for name, part in splits.items()}, split_procedure)
    if accelerator.is_main_process:
        if not config.resume_from_checkpoint and (output_dir / "checkpoints").is_dir():
            logger.info("starting afresh (--overwrite_output_dir): removing resumable states in %s",
                        output_dir / "checkpoints")
            shutil.rmtree(output_dir / "checkpoints")
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(split_manifest(splits, split_procedure, config.val_fraction), output_dir / "splits.json")
        write_json({k: v for k, v in asdict(config).items() if k != "hub_token"}
                   | {"pretrained_weights_sha256": sha256(weights) if weights else None,
                      "pretrained_weights_hub": f"{hub_weights.repo_id}@{hub_weights.revision}" if hub_weights else None},
                   output_dir / "training_config.json")

    if config.report_to:
        accelerator.init_trackers("pneumonia-detector", config={k: v if isinstance(v, (int, float, bool)) else str(v)
                                                                for k, v in asdict(config).items() if k != "hub_token"})

    # Build the model
    model = model_for_training(config.model_name, config.pretrained, config.head_hidden_dim, config.dropout, weights)

    # Train!
    best, cached = train(config, accelerator, model, splits, output_dir)

    # Fit the not-an-X-ray guard, the temperature and the threshold (validation only: test stays untouched)
    fitted = finalise_best_model(config, accelerator, splits, output_dir, cached, best["epoch"])

    # Evaluate the best model on the untouched test set
    test_dir = Path(config.dataset_name or config.data_dir) / "test"  # where test_predictions.json says images are
    results = evaluate_on_test(accelerator, output_dir / "best", splits["test"], test_dir, output_dir,
                               config.per_device_eval_batch_size, config.num_workers, config.extraction_engine)
    results |= {"best_epoch": best["epoch"], "best_val_accuracy": best["accuracy"],
                "best_val_balanced_accuracy": best["balanced_accuracy"], "best_val_loss": best["loss"],
                "metric_for_best_model": config.metric_for_best_model,
                "imagenet_weights": config.pretrained, "model_name": config.model_name,
                "num_train_epochs": config.num_train_epochs, "train_samples": len(train_split),
                "validation_samples": len(val_split), "train_runtime_seconds": time.perf_counter() - started,
                "train_class_weights": class_weighted_loss(train_split["label"]).weight.tolist(),
                **fitted}
    if accelerator.is_main_process:
        write_json(results, output_dir / "all_results.json")
        plot_confusion_matrix(results["test_confusion_matrix"], results["test_confusion_matrix_labels"],
                              output_dir / "confusion_matrix.png", f"Test set (n={results['test_samples']})")
        write_model_card(output_dir, config.hub_model_id or str(output_dir / "best"))
    accelerator.print(results_table(results))
    accelerator.end_training()

    # Push last: a failed push raises PushError with everything above already saved
    if config.push_to_hub and accelerator.is_main_process:
        commit = push_run(output_dir, config.hub_model_id, config.hub_token, config.hub_private_repo)
        logger.info("pushed to %s", commit.commit_url)
    return results
