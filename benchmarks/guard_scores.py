"""Other not-an-X-ray guard scores vs the trained one (Ledoit-Wolf Mahalanobis on float32 statistics), each
calibrated as the trainer calibrates the guard, side by side on the same images, for N images per class.

    python benchmarks/guard_scores.py --data_dir ../shared/data/chest_xray_224 [--sizes 20 50 150 500 full]

The guard's statistics do not depend on training (the backbone is frozen), so they are extracted once per seeded
random backbone (`--no_pretrained`: no ImageNet weights here) for every image of the shared train/ and test/
folders and the project's non-X-ray images, and each run is simulated on them: the same patient-grouped draws as
benchmarks/small_sites.py (draw d on backbone 42 + d), the trainer's validation split, guard images and, below
200 validation images, its cross-fitting folds; the limit is the conformal one at alpha 0.005. Printed per N and
score: the mean over draws of test/ X-rays refused, of 600 X-rays of train/'s patients the draw left out, and of
non-X-rays refused (with the worst draw's).
"""

import random
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.small_sites import UNSEEN_XRAYS, drawn_images, draws_parser  # noqa: E402
from dataset_scripts.non_xray_images import non_xray_images  # noqa: E402
from serving.images import read_image  # noqa: E402
from trainer.config import TrainingConfig  # noqa: E402
from trainer.cross_fit import SMALL_VALIDATION, folds  # noqa: E402
from trainer.data import held_out_patients, patient_id  # noqa: E402
from trainer.feature_guard import DEFAULT_FALSE_REFUSAL, conformal_limit, fit_guard_distribution, guard_distances  # noqa: E402
from trainer.model import model_for_training  # noqa: E402
from trainer.train import guard_sample  # noqa: E402


def trained(statistics: np.ndarray):
    mean, precision = fit_guard_distribution(statistics.astype(np.float32))
    return lambda x: guard_distances(x, mean, precision)


def ledoit_wolf_float64(statistics: np.ndarray):
    mean, precision = fit_guard_distribution(statistics.astype(np.float64))
    return lambda x: guard_distances(x.astype(np.float64), mean.double(), precision)


def standardiser(statistics: np.ndarray):
    """z-scores, with a floor on the spread: a random backbone has near-constant (dead) channels."""
    mean, spread = statistics.mean(0), statistics.std(0)
    spread = np.maximum(spread, 1e-2 * np.median(spread))
    return lambda x: (x - mean) / spread


def principal_components(components: int, residual: bool):
    """Mahalanobis in the top principal components of the z-scores, plus (optionally) the residual's norm weighed
    as much as the components together."""
    def fit(statistics: np.ndarray):
        standardise = standardiser(statistics)
        _, singular, directions = np.linalg.svd(standardise(statistics).astype(np.float64), full_matrices=False)
        k = min(components, len(statistics) - 1)
        variance = singular ** 2 / (len(statistics) - 1)
        residual_variance = variance[k:].sum() / max(statistics.shape[1] - k, 1)

        def score(x):
            z = standardise(x)
            projected = z @ directions[:k].T
            distance = np.sum(projected ** 2 / variance[:k], axis=1)
            if residual:
                left = np.sum(z ** 2, axis=1) - np.sum(projected ** 2, axis=1)
                distance += left / residual_variance * k / (statistics.shape[1] - k)
            return np.sqrt(distance)
        return score
    return fit


def diagonal(statistics: np.ndarray):
    standardise = standardiser(statistics)
    return lambda x: np.sqrt(np.mean(standardise(x) ** 2, axis=1))


def nearest_neighbour(k: int):
    def fit(statistics: np.ndarray):
        standardise = standardiser(statistics)
        fitted = torch.from_numpy(standardise(statistics))
        return lambda x: torch.cdist(torch.from_numpy(standardise(x)), fitted).sort(dim=1).values[:, k - 1].numpy()
    return fit


SCORES = {"trained (LW, float32)": trained, "LW, float64": ledoit_wolf_float64,
          "PCA 10 + residual": principal_components(10, True), "PCA 30 + residual": principal_components(30, True),
          "PCA 30": principal_components(30, False), "diagonal": diagonal, "5-NN": nearest_neighbour(5)}


def extract(data_dir: Path, seed: int, cache: Path) -> dict[str, np.ndarray]:
    """Guard statistics of train/, test/ and the non-X-rays under the backbone a `--no_pretrained --seed SEED` run
    draws, cached in `cache`."""
    if cache.is_file():
        return dict(np.load(cache))
    set_seed(seed)
    model = model_for_training("resnet18", pretrained=False, head_hidden_dim=256, dropout=0.5).eval()

    def statistics(images) -> np.ndarray:
        rows = []
        for start in range(0, len(images), 64):
            with torch.inference_mode():
                pixels = torch.stack([model.transform(read_image(image) if isinstance(image, Path) else image)
                                      for image in images[start:start + 64]])
                rows.append(model.serving_forward(pixels)[1].numpy())
        return np.concatenate(rows)

    train = sorted(data_dir.glob("train/*/*.jpeg"))
    extracted = {"train": statistics(train), "test": statistics(sorted(data_dir.glob("test/*/*.jpeg"))),
                 "non_xrays": statistics(list(non_xray_images().values())),
                 "train_names": np.array([str(path.relative_to(data_dir)) for path in train])}
    np.savez(cache, **extracted)
    return extracted


def simulate(extracted: dict, data_dir: Path, per_class: int | None, draw: int) -> dict[str, tuple[float, float, float]]:
    """{score: (test X-rays refused, unseen train/ X-rays refused, non-X-rays refused)} for one run."""
    names, statistics = extracted["train_names"], extracted["train"]
    labels = np.array([0 if "/NORMAL/" in name else 1 for name in names])
    patients = np.array([patient_id(Path(name).name) for name in names])
    seed = 42 + draw
    index = {name: i for i, name in enumerate(names)}
    chosen = np.array([index[str(path.relative_to(data_dir))] for path in drawn_images(data_dir, per_class, draw)])
    in_validation = np.isin(patients[chosen], list(held_out_patients(labels[chosen], patients[chosen],
                                                                     TrainingConfig.val_fraction, seed)))
    validation, train = chosen[in_validation], chosen[~in_validation]
    guard_images = train[guard_sample(len(train), seed)]
    unseen = np.setdiff1d(np.arange(len(names)), chosen)
    unseen = np.array(random.Random(0).sample(list(unseen), min(UNSEEN_XRAYS, len(unseen))), dtype=int)
    measured = {}
    for name, fit in SCORES.items():
        score = fit(statistics[guard_images])
        distances = score(statistics[validation])
        if len(validation) < SMALL_VALIDATION:  # the trainer's cross-fitting: each image scored without its fold
            cross_fitted = np.empty(len(guard_images))
            for fitted, held_out in folds(labels[guard_images], list(patients[guard_images]), seed):
                cross_fitted[held_out] = fit(statistics[guard_images[fitted]])(statistics[guard_images[held_out]])
            distances = np.concatenate([distances, cross_fitted])
        limit, _ = conformal_limit(distances, DEFAULT_FALSE_REFUSAL)
        measured[name] = (float(np.mean(score(extracted["test"]) > limit)),
                          float(np.mean(score(statistics[unseen]) > limit)) if len(unseen) else float("nan"),
                          float(np.mean(score(extracted["non_xrays"]) > limit)))
    return measured


def main() -> None:
    args = draws_parser(__doc__, Path("/tmp/guard_scores")).parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    draws = max(1 if size == "full" else args.subsamples for size in args.sizes)
    extracted = [extract(args.data_dir, 42 + draw, args.work_dir / f"statistics-{42 + draw}.npz")
                 for draw in range(draws)]
    print(f"{'N/class':>8} {'score':>22} {'X-rays refused':>15} {'unseen train':>13} {'non-X-rays refused':>19} "
          f"{'(worst draw)':>13}")
    for size in args.sizes:
        runs = [simulate(extracted[draw], args.data_dir, None if size == "full" else int(size), draw)
                for draw in range(1 if size == "full" else args.subsamples)]
        for name in SCORES:
            measured = np.array([run[name] for run in runs])
            print(f"{size:>8} {name:>22} {measured[:, 0].mean():>15.3f} {measured[:, 1].mean():>13.3f} "
                  f"{measured[:, 2].mean():>19.3f} {measured[:, 2].min():>13.3f}", flush=True)


if __name__ == "__main__":
    main()
