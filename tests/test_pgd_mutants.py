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
    from ssl_robust.pgd import RandomStarts

    x = images(2).to(torch.bfloat16)
    for norm in ("linf", "l2"):
        assert RandomStarts(0, range(len(x))).draw(x, 8 / 255, norm).dtype == torch.bfloat16


def test_l2_random_start_of_a_single_image_lies_in_the_ball() -> None:
    from ssl_robust.pgd import RandomStarts

    delta = RandomStarts(0, range(len(images(1)))).draw(images(1), 0.5, "l2")
    assert delta.shape == (1, *SHAPE) and 0 < float(delta.norm()) <= 0.5 + 1e-6


def test_invalid_settings_raise_errors_that_name_them() -> None:
    import pytest

    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2', got 'l1'"):
        pgd(linear_forward(), cross_entropy, x, y, eps=0.1, step_size=0.1, steps=1, norm="l1")
    with pytest.raises(ValueError, match=r"restarts >= 1; got 0.1, 1, 0"):
        pgd(linear_forward(), cross_entropy, x, y, eps=0.1, step_size=0.1, steps=1, restarts=0)


def test_default_seed_is_zero() -> None:
    x, y = images(3), torch.tensor([0, 1, 2])
    kwargs = dict(eps=8 / 255, step_size=2 / 255, steps=2)
    assert torch.equal(pgd(linear_forward(), cross_entropy, x, y, **kwargs).x_adv,
                       pgd(linear_forward(), cross_entropy, x, y, seed=0, **kwargs).x_adv)
    assert not torch.equal(pgd(linear_forward(), cross_entropy, x, y, **kwargs).x_adv,
                           pgd(linear_forward(), cross_entropy, x, y, seed=1, **kwargs).x_adv)


def test_fooled_samples_stay_in_the_batch_unless_asked_to_leave() -> None:
    forward = linear_forward()
    x = images(4)
    y = forward(x).argmin(1)  # every sample already misclassified... by its least likely class
    fooled = lambda output, target: output.argmax(1) != target  # noqa: E731
    result = pgd(forward, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3, success_fn=fooled)
    assert bool(result.success.all())
    assert result.grad_steps == 4 * 3 and result.forward_passes == 4 * (3 + 1)


def test_the_returned_output_has_the_dtype_of_the_forward() -> None:
    weight = torch.randn(3, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = images(2).double(), torch.tensor([0, 1])
    result = pgd(lambda v: v.flatten(1) @ weight.T, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=2,
                 success_fn=lambda output, target: output.argmax(1) != target)
    assert result.output is not None and result.output.dtype == torch.float64


def fooled(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.argmax(1) != target


def half_fooled_batch(forward):
    """Four images: the first two labelled with their least likely class (fooled at once), the last
    two with their predicted class by a wide margin (a tiny eps never flips them)."""
    x = images(4)
    logits = forward(x)
    y = torch.cat([logits[:2].argmin(1), logits[2:].argmax(1)])
    return x, y


def test_ties_between_restarts_keep_the_first_restart() -> None:
    from ssl_robust.pgd import RandomStarts

    x, y = images(2), torch.tensor([0, 1])
    constant = lambda output, target, step, steps: output.sum(1) * 0  # noqa: E731
    result = pgd(linear_forward(), constant, x, y, eps=8 / 255, step_size=2 / 255, steps=0, restarts=3)
    first_start = RandomStarts(0, range(len(x))).draw(x, 8 / 255, "linf")
    torch.testing.assert_close(result.x_adv, x + first_start)


def test_ties_in_damage_keep_the_earliest_iterate() -> None:
    from ssl_robust.pgd import RandomStarts

    x, y = images(2), torch.tensor([0, 1])
    result = pgd(linear_forward(), cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3,
                 damage_fn=lambda output, target: torch.zeros(len(output)))
    first_iterate = x + RandomStarts(0, range(len(x))).draw(x, 8 / 255, "linf")
    torch.testing.assert_close(result.x_adv, first_iterate)


def test_restarts_after_every_sample_is_fooled_are_skipped() -> None:
    forward = linear_forward()
    x, y = images(3), forward(images(3)).argmin(1)
    result = pgd(forward, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3, restarts=3,
                 success_fn=fooled, stop_when_fooled=True)
    assert bool(result.success.all()) and result.grad_steps == 3  # one step of the first restart


def test_later_restarts_attack_only_the_samples_still_robust() -> None:
    forward = linear_forward()
    x, y = half_fooled_batch(forward)
    result = pgd(forward, cross_entropy, x, y, eps=1e-6, step_size=1e-7, steps=3, restarts=2,
                 success_fn=fooled, stop_when_fooled=True)
    assert result.success.tolist() == [True, True, False, False]
    assert result.grad_steps == (4 + 2 + 2) + 2 * 3  # restart 1: all, then the robust two; restart 2: the two
    assert result.step_count.tolist() == [4 + 2, 2 + 2, 2 + 2]


def test_most_damaging_iterate_of_samples_still_attacked_does_not_depend_on_those_that_left() -> None:
    forward = linear_forward()
    x, y = half_fooled_batch(forward)
    kwargs = dict(eps=1e-6, step_size=1e-7, steps=3, random_start=False, success_fn=fooled, stop_when_fooled=True,
                  damage_fn=lambda output, target: -output.gather(1, target[:, None])[:, 0])
    together = pgd(forward, cross_entropy, x, y, **kwargs)
    alone = pgd(forward, cross_entropy, x[2:], y[2:], **kwargs)
    torch.testing.assert_close(together.x_adv[2:], alone.x_adv)


def test_a_non_finite_gradient_at_an_early_step_is_reported() -> None:
    def infinite_at_first_step(output, target, step, steps):  # gradient +-inf everywhere, its sign finite
        return output.sum(1) * (float("inf") if step == 1 else 1.0)

    result = pgd(linear_forward(), infinite_at_first_step, images(2), torch.tensor([0, 1]), eps=8 / 255,
                 step_size=2 / 255, steps=3)
    assert result.grad_finite is False


def test_a_sample_with_a_small_gradient_on_one_pixel_counts_as_nonzero() -> None:
    forward = lambda x: 1e-3 * x[:, :1, 0, 0] * torch.tensor([[1.0, -1.0]])  # noqa: E731  one pixel, two logits
    result = pgd(forward, cross_entropy, images(3), torch.tensor([0, 1, 0]), eps=8 / 255, step_size=2 / 255,
                 steps=2)
    assert result.grad_nonzero == 1.0


def test_without_gradient_steps_the_nonzero_fraction_is_one() -> None:
    result = pgd(linear_forward(), cross_entropy, images(2), torch.tensor([0, 1]), eps=8 / 255, step_size=1 / 255,
                 steps=0)
    assert result.grad_nonzero == 1.0


def test_the_last_robust_sample_is_attacked_for_every_step() -> None:
    forward = linear_forward()
    x, y = half_fooled_batch(forward)
    pair = [1, 3]  # one fooled at once (it leaves after step 1), one robust (then alone in the batch)
    result = pgd(forward, cross_entropy, x[pair], y[pair], eps=1e-6, step_size=1e-7, steps=3, success_fn=fooled,
                 stop_when_fooled=True)
    assert result.success.tolist() == [True, False] and result.grad_steps == 2 + 1 + 1


def test_no_output_is_returned_unless_every_sample_has_one() -> None:
    def nan_for_sample_0(output, target, step, steps):
        loss = cross_entropy(output, target)
        return torch.where(torch.arange(len(loss)) == 0, torch.full_like(loss, float("nan")), loss)

    result = pgd(linear_forward(), nan_for_sample_0, images(2), torch.tensor([0, 1]), eps=8 / 255,
                 step_size=2 / 255, steps=1)
    assert result.output is None
