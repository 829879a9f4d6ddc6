"""The engine and the metrics put every tensor they make on their input's device, never on torch's
default device: a user who sets `torch.set_default_device("cuda")` and attacks CPU images (or the
reverse) gets the same answer. Checked on the CPU by making the default device `meta`: a tensor
created there has no data, and mixing it with a CPU tensor or reading it is an error."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch

from ssl_robust.metrics import per_image_iou
from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import RandomStarts, pgd

SHAPE = (3, 4, 4)


@pytest.fixture()
def default_device_elsewhere() -> Iterator[None]:
    """torch's default device is `meta` for the test (inputs are made on the CPU first)."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def linear_forward(num_classes: int = 3):
    weight = torch.randn(num_classes, 48, generator=torch.Generator().manual_seed(0), device="cpu")
    return lambda x: x.flatten(1) @ weight.T


def images(n: int) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1), device="cpu")


def fooled(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.argmax(1) != target


def damage(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -cross_entropy(output, target)


def attack_everything(x: torch.Tensor, y: torch.Tensor, norm: str = "linf", **options):
    return pgd(linear_forward(), cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3, norm=norm,
               restarts=2, **options)


def assert_on_cpu(result) -> None:
    for name in ("x_adv", "loss", "success", "output", "step_loss_sum", "step_count"):  # success: None without success_fn
        value = getattr(result, name)
        assert value is None or value.device.type == "cpu", f"{name} is on {value.device}"
    assert float(result.loss.sum()) == float(result.loss.sum())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_drawn_on_the_cpu_and_placed_on_the_images_device(default_device_elsewhere, norm: str) -> None:
    x = images(2)
    delta = RandomStarts(0, range(len(x))).draw(x, 8 / 255, norm)
    assert delta.device.type == "cpu"
    assert float(delta.abs().sum()) > 0


def test_pgd_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 0], device="cpu")
    assert_on_cpu(attack_everything(x, y))


def test_pgd_with_a_success_function_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 0], device="cpu")
    assert_on_cpu(attack_everything(x, y, success_fn=fooled))


def test_the_cascade_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    forward, x = linear_forward(), images(4)
    logits = forward(x)  # two images labelled with their least likely class (fooled at once), two not
    y = torch.cat([logits[:2].argmin(1), logits[2:].argmax(1)])
    result = pgd(forward, cross_entropy, x, y, eps=1e-6, step_size=1e-7, steps=3, restarts=2,
                 success_fn=fooled, stop_when_fooled=True)
    assert_on_cpu(result)
    assert result.success.tolist() == [True, True, False, False]


def test_damage_selection_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 0], device="cpu")
    assert_on_cpu(attack_everything(x, y, "l2", damage_fn=damage))


def test_pgd_without_steps_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(2), torch.tensor([0, 1], device="cpu")
    result = pgd(linear_forward(), cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=0)
    assert result.step_loss_sum.device.type == "cpu" and result.step_count.device.type == "cpu"


def test_per_image_iou_counts_on_the_predictions_device(default_device_elsewhere) -> None:
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 255]]], device="cpu")
    inter, union = per_image_iou(pred, pred.clone(), num_classes=3)
    assert inter.device.type == "cpu"
    assert inter.tolist() == union.tolist() == [[1, 3, 0], [1, 0, 2]]


def test_steps_no_sample_reached_are_summed_on_the_images_device(default_device_elsewhere) -> None:
    forward, x = linear_forward(), images(3)
    y = forward(x).argmin(1)  # every image labelled with its least likely class: fooled at the first look
    result = pgd(forward, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3,
                 success_fn=fooled, stop_when_fooled=True)
    assert result.step_count.tolist() == [3, 0, 0]
    assert_on_cpu(result)
