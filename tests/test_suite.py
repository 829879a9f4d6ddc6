"""Attack suites on one batch: the members of each task's standard suite, AutoAttack's cascade for
classification, every member on every image for dense tasks, and a worst case no better than any member."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_robust import engine, suite
from ssl_robust.attacks import target_ranks
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.engine import AttackSettings
from ssl_robust.metrics import SegmentationScores
from ssl_robust.tasks import TASKS
from tests.helpers import images

SETTINGS = AttackSettings(eps=8 / 255, steps=5, optimizer="apgd", stop_when_fooled=True)
CLS, SEG, DEPTH = (TASKS.get(t) for t in ("classification", "segmentation", "depth"))


def linear_classifier(classes: int = 10, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes))
    with torch.no_grad():
        model[1].weight.mul_(scale)
        model[1].bias.mul_(scale)
    return model.eval().requires_grad_(False)


def test_the_classification_suite_is_apgd_ce_then_apgd_t_on_the_top_nine_other_classes() -> None:
    plan = suite.members("standard", CLS, TaskInfo("classification", num_classes=100), SETTINGS, targets=9)
    assert [m.name for m in plan] == ["apgd_ce", "apgd_t"]
    assert plan[1].ranks == tuple(range(2, 11)) and plan[0].ranks == ()


def test_apgd_t_has_at_most_one_target_per_other_class_and_none_below_four_classes() -> None:
    assert target_ranks(5, 9) == (2, 3, 4, 5)
    assert target_ranks(3, 9) == ()
    plan = suite.members("standard", CLS, TaskInfo("classification", num_classes=3), SETTINGS, targets=9)
    assert [m.name for m in plan] == ["apgd_ce"]


def test_the_dense_suites_are_the_sea_losses_and_the_depth_losses() -> None:
    seg = suite.members("standard", SEG, TaskInfo("segmentation", num_classes=5), SETTINGS, targets=9)
    depth = suite.members("standard", DEPTH, TaskInfo("depth"), SETTINGS, targets=9)
    assert [m.name for m in seg] == ["apgd_masked_ce", "apgd_balanced_ce", "apgd_js", "apgd_masked_spherical"]
    assert [m.name for m in depth] == ["apgd_depth_l1", "apgd_depth_l2", "apgd_depth_log"]


def test_an_optimizer_given_overrides_each_members_own() -> None:
    plan = suite.members("standard", CLS, TaskInfo("classification", num_classes=10), SETTINGS, 9, optimizer="pgd")
    assert {m.settings.optimizer for m in plan} == {"pgd"}
    assert suite.members("pgd", CLS, TaskInfo("classification", num_classes=10), SETTINGS, 9)[0].settings.optimizer \
        == "pgd"


def test_the_cascade_attacks_only_the_samples_no_earlier_attack_fooled(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[tuple[int, bool]] = []
    real = engine.run_attack

    def spy(forward, objective, x, target, settings, success_fn=None, damage_fn=None, sample_ids=None):
        result = real(forward, objective, x, target, settings, success_fn, damage_fn, sample_ids)
        sizes.append((len(x), target.dim() == 2))
        spy.fooled.append(int(result.success.sum()))
        return result

    spy.fooled = []
    monkeypatch.setattr(suite, "run_attack", spy)
    model, x = linear_classifier(), images(32)
    y = model(x).argmax(1)
    plan = suite.members("standard", CLS, TaskInfo("classification", num_classes=10),
                         AttackSettings(eps=0.5 / 255, steps=5, optimizer="apgd"), targets=3)
    results = suite.cascade(model, x, y, model(x), plan, CLS.fooled)
    assert sizes[0] == (32, False) and all(targeted for _, targeted in sizes[1:])
    for k in range(1, len(sizes)):
        assert sizes[k][0] == sizes[k - 1][0] - spy.fooled[k - 1]  # the still-robust samples only
    assert len(results) == 2 and int(results[1].success.sum()) == sum(spy.fooled)


def test_cumulative_cascade_results_only_add_fooled_samples() -> None:
    model, x = linear_classifier(), images(32)
    y = model(x).argmax(1)
    plan = suite.members("standard", CLS, TaskInfo("classification", num_classes=10),
                         AttackSettings(eps=0.5 / 255, steps=5, optimizer="apgd"), targets=3)
    first, last = suite.cascade(model, x, y, model(x), plan, CLS.fooled)
    assert bool((first.success <= last.success).all())
    assert bool((CLS.fooled(model(last.x_adv), y) == last.success).all())  # its inputs fool the model
    assert bool((last.output == model(last.x_adv)).all())


def test_the_suite_finds_what_cross_entropy_misses_on_saturated_logits() -> None:
    model, x = linear_classifier(scale=1e4), images(64)
    y = model(x).argmax(1)
    info = TaskInfo("classification", num_classes=10)
    ce_only = suite.cascade(model, x, y, model(x), suite.members("apgd_ce", CLS, info, SETTINGS, 9), CLS.fooled)
    full = suite.cascade(model, x, y, model(x), suite.members("standard", CLS, info, SETTINGS, 9), CLS.fooled)
    assert int(ce_only[-1].grad_zero.sum()) > 32  # cross-entropy's gradient underflows
    assert int(full[-1].success.sum()) > int(ce_only[-1].success.sum())
    assert int(full[-1].grad_zero.sum()) == 0  # zero only if zero in every attack that stepped on it


def test_a_dense_suite_runs_every_member_on_every_image() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1).eval().requires_grad_(False)
    x = torch.rand(4, 3, 6, 6)
    masks = model(x).argmax(1)
    plan = suite.members("standard", SEG, TaskInfo("segmentation", num_classes=5), SETTINGS, 9)
    results = suite.dense(model, x, masks, plan, None)
    assert len(results) == 4 and all(len(r.x_adv) == 4 and r.output is not None for r in results)


def _segmentation_scores(inter: list[list[list[int]]], union: list[list[list[int]]]) -> list[SegmentationScores]:
    members = []
    for i, u in zip(inter, union):
        scores = SegmentationScores(TaskInfo("segmentation", num_classes=2))
        scores.inter, scores.union = [torch.tensor(i)], [torch.tensor(u)]
        members.append(scores)
    return members


def test_the_combined_miou_is_no_higher_than_any_members_where_per_image_picks_would_be() -> None:
    """Each image's lowest per-image mIoU would give 0.472, above the second member's own 0.397."""
    members = _segmentation_scores([[[0, 2], [1, 1], [1, 0]], [[0, 1], [4, 0], [0, 1]]],
                                   [[[1, 2], [1, 2], [1, 1]], [[1, 5], [4, 3], [2, 1]]])
    info = TaskInfo("segmentation", num_classes=2)
    combined = suite.combine(SEG, info, members)
    own = [m.summary()["miou"] for m in members]
    assert combined.summary()["miou"] <= min(own)
    greedy = SegmentationScores.picked(info, members, [1, 1, 0])
    assert greedy.summary()["miou"] > min(own)  # the broken rule the check must catch


def test_the_depth_worst_case_takes_each_images_highest_error() -> None:
    torch.manual_seed(0)
    info = TaskInfo("depth", min_depth=1e-3, max_depth=10.0)
    target = torch.rand(3, 4, 4) + 1
    members = [DEPTH.scores(info) for _ in range(2)]
    members[0].add(target + torch.tensor([0.1, 0.5, 0.2]).view(3, 1, 1), target)
    members[1].add(target + torch.tensor([0.3, 0.1, 0.4]).view(3, 1, 1), target)
    combined = suite.combine(DEPTH, info, members)
    assert combined.per_sample == pytest.approx([0.3, 0.5, 0.4], rel=1e-5)


def test_one_member_is_its_own_worst_case() -> None:
    members = _segmentation_scores([[[1, 1]]], [[[2, 2]]])
    assert suite.combine(SEG, TaskInfo("segmentation", num_classes=2), members) is members[0]
