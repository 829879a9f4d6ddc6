"""Task specs: the training loss each head recipe asks for."""
from __future__ import annotations

import pytest
import torch

from ssl_robust.config import HeadCfg
from ssl_robust.data.catalog import DATASETS
from ssl_robust.objectives import log_depth_gradient, silog
from ssl_robust.tasks import TASKS


def test_the_depth_head_loss_adds_half_the_gradient_loss_under_silog_grad() -> None:
    info = DATASETS.get("nyuv2").infos["depth"]
    target = torch.rand(2, 9, 9) * 4 + 0.5
    pred = torch.rand(2, 9, 9) * 4 + 0.5
    plain = TASKS.get("depth").loss(info, HeadCfg())(pred, target)
    both = TASKS.get("depth").loss(info, HeadCfg(depth_loss="silog_grad"))(pred, target)
    expected_silog = silog(pred, target, min_depth=info.min_depth).mean()
    assert float(plain) == pytest.approx(float(expected_silog))
    gradient = log_depth_gradient(pred, target, min_depth=info.min_depth).mean()
    assert float(gradient) > 0 and float(both) == pytest.approx(float(expected_silog + 0.5 * gradient))


def test_a_lower_is_better_task_scores_the_closer_head_higher_on_validation() -> None:
    """fit_head keeps the epoch with the highest validation score: for depth, the lowest RMSE."""
    info = DATASETS.get("nyuv2").infos["depth"]
    target = torch.rand(2, 6, 6) * 4 + 1
    close, far = target + 0.1, target + 1.0
    depth = TASKS.get("depth")
    assert depth.validation_score(info, [(close, target)]) > depth.validation_score(info, [(far, target)])
    classes = TASKS.get("classification")
    labels = torch.tensor([0, 1, 1])
    right, wrong = torch.eye(2)[labels], torch.eye(2)[1 - labels]
    assert classes.validation_score(DATASETS.get("cifar10").infos["classification"], [(right, labels)]) > \
        classes.validation_score(DATASETS.get("cifar10").infos["classification"], [(wrong, labels)])
