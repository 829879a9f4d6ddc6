"""The PGD engine's bookkeeping and edges that the attack outcome alone does not reveal."""
from __future__ import annotations

import torch

from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import pgd

SHAPE = (3, 4, 4)


def linear_forward(num_classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, 48, generator=gen)
    return lambda x: x.flatten(1) @ weight.T


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_step_loss_sums_are_the_summed_objective_at_each_step() -> None:
    seen: list[float] = []

    def recording(output, target, step, steps):
        loss = cross_entropy(output, target)
        if output.requires_grad:  # a gradient step, not the final evaluation
            seen.append(float(loss.sum()))
        return loss

    x, y = images(4), torch.tensor([0, 1, 2, 0])
    result = pgd(linear_forward(), recording, x, y, eps=8 / 255, step_size=2 / 255, steps=3, restarts=2)
    per_step = torch.tensor(seen, dtype=torch.float64).view(2, 3).sum(0)  # restarts x steps
    assert result.step_loss_sum.dtype == torch.float64
    torch.testing.assert_close(result.step_loss_sum, per_step)
    assert result.step_count.tolist() == [8, 8, 8]


def test_zero_steps_give_an_empty_float64_loss_curve() -> None:
    result = pgd(linear_forward(), cross_entropy, images(2), torch.tensor([0, 1]), eps=8 / 255, step_size=1 / 255,
                 steps=0)
    assert result.step_loss_sum.shape == (0,) and result.step_loss_sum.dtype == torch.float64


def test_random_start_has_the_dtype_of_the_images() -> None:
    from ssl_robust.pgd import random_delta

    x = images(2).to(torch.bfloat16)
    for norm in ("linf", "l2"):
        assert random_delta(x, 8 / 255, norm, torch.Generator().manual_seed(0)).dtype == torch.bfloat16


def test_l2_random_start_of_a_single_image_lies_in_the_ball() -> None:
    from ssl_robust.pgd import random_delta

    delta = random_delta(images(1), 0.5, "l2", torch.Generator().manual_seed(0))
    assert delta.shape == (1, *SHAPE) and 0 < float(delta.norm()) <= 0.5 + 1e-6
