"""Choosing per item which attack's result to keep: the worst case is never above any single attack."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_robust.metrics import miou_from_confusion
from ssl_robust.report.artifacts import per_image_miou
from ssl_robust.worst import miou_of, worst_mean_pick, worst_miou_pick

# Two attacks x three images x two classes (per-image intersections and unions): EmbedAttack's own
# mIoU is 0.6333, SegPGD's 0.3968; each image's lowest per-image mIoU gives 0.4722; the optimum is 0.3125.
INTER = np.array([[[0, 2], [1, 1], [1, 0]], [[0, 1], [4, 0], [0, 1]]])
UNION = np.array([[[1, 2], [1, 2], [1, 1]], [[1, 5], [4, 3], [2, 1]]])


def picked(inter: np.ndarray, union: np.ndarray, pick: np.ndarray) -> float:
    items = np.arange(pick.size)
    return miou_of(inter[pick, items], union[pick, items])


def own(inter: np.ndarray, union: np.ndarray) -> list[float]:
    return [miou_of(i, u) for i, u in zip(inter, union)]


def greedy(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.argmin(np.stack([per_image_miou(i, u) for i, u in zip(inter, union)]), axis=0)


def brute_force(inter: np.ndarray, union: np.ndarray) -> float:
    choices = itertools.product(range(inter.shape[0]), repeat=inter.shape[1])
    values = [picked(inter, union, np.array(p)) for p in choices]
    return min(v for v in values if not np.isnan(v))


def random_case(rng: np.random.Generator, attacks: int, items: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    union = rng.integers(0, 20, (attacks, items, classes))
    return rng.integers(0, 21, union.shape) % (union + 1), union


def test_each_images_lowest_per_image_miou_ends_above_an_attacks_own_miou() -> None:
    assert own(INTER, UNION) == pytest.approx([0.6333333, 0.3968254])
    assert greedy(INTER, UNION).tolist() == [1, 1, 0]
    assert picked(INTER, UNION, greedy(INTER, UNION)) == pytest.approx(0.4722222)
    assert picked(INTER, UNION, greedy(INTER, UNION)) > min(own(INTER, UNION))


def test_worst_miou_pick_is_below_every_attack_on_the_non_monotone_case() -> None:
    pick = worst_miou_pick(INTER, UNION)
    assert picked(INTER, UNION, pick) <= min(own(INTER, UNION))
    assert picked(INTER, UNION, pick) == pytest.approx(0.3125)
    assert pick.tolist() == [1, 0, 1]


def test_worst_miou_pick_is_below_every_attack_and_the_greedy_choice_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        inter, union = random_case(rng, int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 6)))
        value = picked(inter, union, worst_miou_pick(inter, union))
        assert value <= np.nanmin(own(inter, union))
        assert value <= picked(inter, union, greedy(inter, union))


def test_worst_miou_pick_reaches_the_brute_force_optimum_on_tiny_cases() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        inter, union = random_case(rng, 2, int(rng.integers(1, 7)), 3)
        union[:, :, 0] += 1  # every image has a class, so no choice has an undefined mIoU
        value = picked(inter, union, worst_miou_pick(inter, union))
        assert value <= min(own(inter, union))
        assert value == pytest.approx(brute_force(inter, union), abs=1e-12)


def test_worst_miou_pick_keeps_the_lowest_attack_when_no_switch_lowers_it() -> None:
    inter = np.array([[[3, 3], [2, 2]], [[1, 1], [1, 1]]])
    union = np.full((2, 2, 2), 4)
    assert worst_miou_pick(inter, union).tolist() == [1, 1]
    assert worst_miou_pick(inter[::-1], union).tolist() == [0, 0]


def test_worst_miou_pick_starts_from_the_first_of_tied_attacks() -> None:
    inter, union = np.ones((3, 2, 2)), np.full((3, 2, 2), 2)
    assert worst_miou_pick(inter, union).tolist() == [0, 0]


def test_worst_mean_pick_takes_the_lowest_score_when_higher_is_better() -> None:
    assert worst_mean_pick(np.array([[0.9, 0.1], [0.5, 0.7]]), True).tolist() == [1, 0]


def test_worst_mean_pick_takes_the_highest_score_when_lower_is_better() -> None:
    assert worst_mean_pick(np.array([[0.9, 0.1], [0.5, 0.7]]), False).tolist() == [0, 1]


@pytest.mark.parametrize("higher", [True, False])
def test_worst_mean_pick_never_takes_nan_unless_every_attack_has_it(higher: bool) -> None:
    scores = np.array([[np.nan, np.nan, 0.3], [0.4, np.nan, np.nan]])
    assert worst_mean_pick(scores, higher).tolist() == [1, 0, 0]


@pytest.mark.parametrize("higher", [True, False])
def test_worst_mean_pick_gives_ties_to_the_first_attack(higher: bool) -> None:
    assert worst_mean_pick(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), higher).tolist() == [0, 0]


def test_miou_of_equals_miou_from_confusion_of_the_same_counts() -> None:
    conf = torch.tensor([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 0, 0], [1, 0, 0, 4]])  # class 2 absent
    inter = conf.diag().numpy()
    union = (conf.sum(0) + conf.sum(1) - conf.diag()).numpy()
    split = np.stack([inter // 2, inter - inter // 2]), np.stack([union // 2, union - union // 2])  # two images
    assert miou_of(*split) == pytest.approx(miou_from_confusion(conf), abs=1e-12)


def test_miou_of_is_nan_without_any_class() -> None:
    assert np.isnan(miou_of(np.zeros((2, 3)), np.zeros((2, 3))))


def test_the_module_imports_without_torch() -> None:
    code = "import sys, ssl_robust.worst; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
