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
