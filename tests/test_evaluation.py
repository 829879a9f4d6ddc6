"""``ssl_robust.evaluate``: any model, the standard suite, and a robust accuracy at most that of
torchattacks' APGD-CE and APGD-T together (plus one sample) on the same model, inputs and budget."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssl_robust
from ssl_robust.config import EncoderCfg
from ssl_robust.encoders import create_encoder
from tests.helpers import require_torchattacks


class Scaled(nn.Module):
    """``model``'s logits times ``scale``: the same predictions, saturated cross-entropy."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class MeanPooledViT(nn.Module):
    """A random-init tiny ViT, its patch tokens mean-pooled into a linear head of 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = create_encoder(EncoderCfg(name="tiny_dinov2"))
        self.head = nn.Linear(self.encoder.embed_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, tokens = self.encoder.features_at(x, None)
        return self.head(tokens.flatten(2).mean(-1))


def trained_cnn(x: torch.Tensor) -> nn.Module:
    """A small CNN fitted to random labels on ``x`` (confident, partly saturated logits)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    labels = torch.randint(0, 10, (len(x),))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(net(x), labels).backward()
        opt.step()
    return net.eval().requires_grad_(False)


def _peer_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> float:
    """torchattacks' APGD-CE and APGD-T: a sample is robust only if both failed."""
    ta = require_torchattacks()
    with torch.no_grad():
        ce = model(ta.APGD(model, eps=eps, steps=steps, loss="ce", n_restarts=1, seed=0)(x, y)).argmax(1) == y
        t = model(ta.APGDT(model, eps=eps, steps=steps, n_classes=10, n_restarts=1, seed=0)(x, y)).argmax(1) == y
    return float((ce & t).float().mean())


@pytest.mark.parametrize("case, eps", [("vit", 0.5 / 255), ("cnn_x100", 8 / 255)])
def test_standard_suite_is_at_most_torchattacks_apgd_ce_and_apgd_t_plus_one_sample(case: str, eps: float) -> None:
    x = torch.rand(32, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    model = MeanPooledViT().eval().requires_grad_(False) if case == "vit" else Scaled(trained_cnn(x), 100.0)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels = the model's own predictions: clean accuracy 1
    found = ssl_robust.evaluate(model, x, y, task="classification", eps=eps, steps=10)
    assert found.clean_score == 1.0
    assert found.score <= _peer_robust(model, x, y, eps, steps=10) + 1 / len(x)
    assert all(found.checks.values()), found.checks


def test_evaluate_returns_the_worst_case_each_attacks_result_and_the_checks() -> None:
    model = Scaled(trained_cnn(torch.rand(16, 3, 8, 8)), 1.0)
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    found = ssl_robust.evaluate(model, x, y, task="classification", eps=4 / 255, steps=5, batch_size=8)
    assert set(found.per_attack) == {"apgd_ce", "apgd_t"}
    assert len(found.robust) == 16 and found.score == sum(found.robust) / 16
    assert found.per_attack["apgd_t"].score == found.score <= found.per_attack["apgd_ce"].score
    assert {"delta_in_ball", "x_adv_in_box", "grad_finite", "grad_nonzero", "adv_not_better"} == set(found.checks)
    assert found.grad_steps > 0


def test_evaluate_fails_the_gradient_check_of_cross_entropy_alone_on_saturated_logits() -> None:
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = Scaled(trained_cnn(x), 1e4)
    y = model(x).argmax(1)
    assert not ssl_robust.evaluate(model, x, y, task="classification", eps=1 / 255, steps=5,
                                   attacks="apgd_ce").checks["grad_nonzero"]


def test_evaluate_on_a_segmentation_model_scores_each_image_and_is_no_better_than_any_loss() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        model.weight.normal_(0, 4), model.bias.zero_()  # per-pixel logits whose argmax varies over the image
    model = model.eval().requires_grad_(False)
    x = torch.rand(6, 3, 8, 8)
    masks = model(x).argmax(1)
    found = ssl_robust.evaluate(model, x, masks, task="segmentation", eps=8 / 255, steps=5)
    assert len(found.per_image) == 6 and found.robust is None
    assert set(found.per_attack) == {"apgd_masked_ce", "apgd_balanced_ce", "apgd_js", "apgd_masked_spherical"}
    assert all(found.score <= r.score for r in found.per_attack.values())
    assert found.score < found.clean_score == 1.0


def test_evaluate_on_a_depth_model_keeps_each_images_highest_error() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.Softplus()).eval().requires_grad_(False)
    x = torch.rand(4, 3, 8, 8)
    depth = model(x)[:, 0] + 0.5
    found = ssl_robust.evaluate(model, x, depth, task="depth", eps=4 / 255, steps=5)
    per_attack = [r.per_image for r in found.per_attack.values()]
    assert found.per_image == pytest.approx([max(v) for v in zip(*per_attack)])


def test_evaluate_refuses_an_attack_on_the_encoders_representation() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="representation"):
        ssl_robust.evaluate(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]), task="classification",
                            eps=0.1, attacks="embed")


def test_evaluate_refuses_an_attack_of_another_task() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="does not apply"):
        ssl_robust.evaluate(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]), task="classification",
                            eps=0.1, attacks="segpgd")


def test_eps_zero_leaves_every_item_at_its_clean_score() -> None:
    model = Scaled(trained_cnn(torch.rand(8, 3, 8, 8)), 1.0)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    found = ssl_robust.evaluate(model, x, y, task="classification", eps=0.0, steps=3)
    assert found.score == found.clean_score == 1.0
