"""One definition per concept: the two files that must stand alone on the Hub (the transformers remote code and the
`evaluate` metric) keep copies of the project's labels, guard and screening metrics; these tests prove they agree."""

import importlib.util

import numpy as np
import pytest
import torch

from serving import guard, labels
from serving.hub_format import REMOTE_CODE
from trainer.evaluation import load_metric
from trainer.metrics.pneumonia_metrics import LABEL_NAMES
from trainer.report import screening_metrics


@pytest.fixture(scope="module")
def remote_code():
    """The remote code as transformers loads it: one file, imported on its own."""
    spec = importlib.util.spec_from_file_location("modeling_pneumonia", REMOTE_CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_remote_code_has_the_projects_labels_refusal_and_guard(remote_code):
    assert remote_code.LABELS == labels.LABELS and remote_code.POSITIVE == labels.POSITIVE
    assert remote_code.NOT_A_CHEST_XRAY == labels.NOT_A_CHEST_XRAY and remote_code.GUARD_STAGES == guard.GUARD_STAGES
    generator = torch.Generator().manual_seed(0)
    stages = [torch.randn(3, channels, size, size, generator=generator) for channels, size in ((8, 6), (16, 3))]
    statistics = guard.stage_statistics(stages)
    assert torch.equal(remote_code.stage_statistics(stages), statistics)
    mean, factor = torch.randn(statistics.shape[1], generator=generator), torch.randn(48, 48, generator=generator)
    precision = (factor @ factor.T).double()
    assert torch.equal(remote_code.mahalanobis(statistics, mean, precision), guard.mahalanobis(statistics, mean, precision))


def test_the_evaluate_metric_computes_the_projects_screening_metrics():
    assert tuple(LABEL_NAMES) == labels.LABELS
    rng = np.random.default_rng(0)
    metric = load_metric()
    for size in (20, 101):
        references = rng.integers(0, 2, size)
        scores = np.clip(references * 0.3 + rng.random(size) * 0.7, 0, 1)
        predictions = (scores >= 0.5).astype(int)
        ours = screening_metrics(references, predictions, scores)
        theirs = metric.compute(predictions=predictions, references=references, scores=scores)
        assert ours == pytest.approx({key: theirs[key] for key in ours}, abs=1e-12)
