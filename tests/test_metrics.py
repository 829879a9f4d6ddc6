"""Task metrics (``ssl_robust.metrics``) agree with independent computations (scikit-learn, numpy) on
random inputs, and count on their input's device."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, jaccard_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from ssl_robust.data import TaskInfo
from ssl_robust.metrics import (ClassificationScores, DepthScores, SegmentationScores, accuracy, confusion_matrix, depth_metrics,
                                mean_iou, miou_from_confusion, per_image_iou, per_image_miou)

IGNORE = 255
NUM_CLASSES = 6  # labels and predictions use only 0..3: classes 4 and 5 are absent from both


def random_segmentation(seed: int, shape=(3, 9, 11)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 4, size=shape)
    target[rng.random(shape) < 0.2] = IGNORE
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, 4, size=shape))
    pred[target == IGNORE] = rng.integers(0, 4, size=int((target == IGNORE).sum()))
    return torch.from_numpy(pred), torch.from_numpy(target)


def sklearn_miou(pred: torch.Tensor, target: torch.Tensor) -> float:
    keep = target.numpy().ravel() != IGNORE
    t, p = target.numpy().ravel()[keep], pred.numpy().ravel()[keep]
    present = sorted(set(t) | set(p))
    return float(jaccard_score(t, p, labels=present, average="macro"))


def numpy_depth_metrics(pred: np.ndarray, target: np.ndarray, min_depth: float, max_depth: float) -> dict:
    """Per image over valid target pixels, then averaged over images."""
    per_image = {"rmse": [], "abs_rel": [], "delta1": []}
    for p, t in zip(pred, target):
        valid = (t > min_depth) & (t <= max_depth)
        p, t = p[valid].astype(np.float64), t[valid].astype(np.float64)
        per_image["rmse"].append(np.sqrt(np.mean((p - t) ** 2)))
        per_image["abs_rel"].append(np.mean(np.abs(p - t) / t))
        per_image["delta1"].append(np.mean(np.maximum(p / t, t / p) < 1.25))
    return {k: float(np.mean(v)) for k, v in per_image.items()}


def random_depth(seed: int, shape=(4, 10, 12)):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.5, 12.0, size=shape).astype(np.float32)  # some beyond max_depth=10
    target[rng.random(shape) < 0.1] = 0.0  # invalid
    pred = (target.clip(0.5) * np.exp(rng.normal(0, 0.3, size=shape))).astype(np.float32)
    return pred, target


# ----------------------------------------------------------------------------- classification


def test_accuracy_matches_sklearn() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 7, generator=gen), torch.randint(7, (50,), generator=gen)
    assert accuracy(logits, labels) == pytest.approx(accuracy_score(labels.numpy(), logits.argmax(1).numpy()))


# ----------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn_without_ignored_pixels(seed: int) -> None:
    pred, target = random_segmentation(seed)
    keep = target.numpy().ravel() != IGNORE
    expected = sk_confusion_matrix(target.numpy().ravel()[keep], pred.numpy().ravel()[keep],
                                   labels=list(range(NUM_CLASSES)))
    np.testing.assert_array_equal(confusion_matrix(pred, target, NUM_CLASSES, IGNORE).numpy(), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_matches_sklearn_jaccard_over_present_classes(seed: int) -> None:
    pred, target = random_segmentation(seed)
    assert mean_iou(pred, target, NUM_CLASSES, IGNORE) == pytest.approx(sklearn_miou(pred, target), rel=1e-9)


def test_miou_counts_a_class_present_only_in_predictions() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 2, 1, 1]])  # class 2 predicted but absent from ground truth: IoU 0
    assert mean_iou(pred, target, 4, IGNORE) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert mean_iou(pred, target, 4, IGNORE) == pytest.approx(sklearn_miou(pred, target))


def test_miou_ignores_predictions_on_ignored_pixels() -> None:
    pred, target = random_segmentation(3)
    other = torch.where(target == IGNORE, (pred + 1) % 4, pred)
    assert mean_iou(other, target, NUM_CLASSES, IGNORE) == mean_iou(pred, target, NUM_CLASSES, IGNORE)


def test_miou_of_nothing_labelled_is_nan() -> None:
    target = torch.full((2, 3, 3), IGNORE)
    assert math.isnan(mean_iou(torch.zeros(2, 3, 3, dtype=torch.long), target, 3, IGNORE))


def test_label_outside_classes_and_not_ignored_raises() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3, IGNORE)


def test_negative_label_error_names_the_negative_label() -> None:
    with pytest.raises(ValueError, match="-1"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, -1, 2]), 3, IGNORE)


def test_miou_accumulated_over_batches_equals_miou_of_all_pixels() -> None:
    pred, target = random_segmentation(4, shape=(6, 8, 8))
    conf = sum(confusion_matrix(pred[i:i + 2], target[i:i + 2], NUM_CLASSES, IGNORE) for i in range(0, 6, 2))
    assert miou_from_confusion(conf) == pytest.approx(sklearn_miou(pred, target), rel=1e-9)


def test_score_accumulator_segmentation_matches_sklearn() -> None:
    pred, target = random_segmentation(5, shape=(6, 8, 8))
    logits = torch.nn.functional.one_hot(pred, NUM_CLASSES).permute(0, 3, 1, 2).float()
    acc = SegmentationScores(TaskInfo("segmentation", num_classes=NUM_CLASSES, ignore_index=IGNORE))
    for i in range(0, 6, 4):
        acc.add(logits[i:i + 4], target[i:i + 4])
    summary = acc.summary()
    keep = target != IGNORE
    assert summary["miou"] == pytest.approx(sklearn_miou(pred, target), rel=1e-9)
    assert summary["pixel_acc"] == pytest.approx(accuracy_score(target[keep].numpy(), pred[keep].numpy()))
    per_image = [accuracy_score(t[k].numpy(), p[k].numpy()) for p, t, k in zip(pred, target, keep)]
    np.testing.assert_allclose(acc.per_sample, per_image, rtol=1e-6)


def test_score_accumulator_classification_is_accuracy() -> None:
    gen = torch.Generator().manual_seed(6)
    logits, labels = torch.randn(10, 4, generator=gen), torch.randint(4, (10,), generator=gen)
    acc = ClassificationScores(TaskInfo("classification", num_classes=4))
    acc.add(logits[:7], labels[:7])
    acc.add(logits[7:], labels[7:])
    assert acc.summary()["acc"] == pytest.approx(accuracy_score(labels.numpy(), logits.argmax(1).numpy()))
    assert acc.per_sample == (logits.argmax(1) == labels).float().tolist()


# ----------------------------------------------------------------------------- depth


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_metrics_match_numpy_per_image_then_averaged(seed: int) -> None:
    pred, target = random_depth(seed)
    got = depth_metrics(torch.from_numpy(pred), torch.from_numpy(target), min_depth=1e-3, max_depth=10.0)
    expected = numpy_depth_metrics(pred, target, 1e-3, 10.0)
    for key in ("rmse", "abs_rel", "delta1"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_score_accumulator_depth_matches_numpy_over_batches() -> None:
    pred, target = random_depth(2, shape=(5, 6, 6))
    acc = DepthScores(TaskInfo("depth", min_depth=1e-3, max_depth=10.0))
    acc.add(torch.from_numpy(pred[:3]), torch.from_numpy(target[:3]))
    acc.add(torch.from_numpy(pred[3:]), torch.from_numpy(target[3:]))
    expected = numpy_depth_metrics(pred, target, 1e-3, 10.0)
    for key, value in acc.summary().items():
        assert value == pytest.approx(expected[key], rel=1e-5), key
    assert len(acc.per_sample) == 5


def test_depth_valid_mask_comes_from_target_only() -> None:
    """Clean and adversarial predictions are scored on the same pixels, whatever they predict."""
    pred, target = random_depth(3)
    adv = pred.copy()
    adv[:, :3] = 50.0  # far beyond max_depth: must still count (as large errors)
    adv[:, 3:5] = 1e-4  # below min_depth: must still count
    got = depth_metrics(torch.from_numpy(adv), torch.from_numpy(target), min_depth=1e-3, max_depth=10.0)
    expected = numpy_depth_metrics(adv, target, 1e-3, 10.0)
    for key in ("rmse", "abs_rel", "delta1"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_depth_predictions_on_invalid_pixels_do_not_matter() -> None:
    pred, target = random_depth(4)
    other = np.where((target > 1e-3) & (target <= 10.0), pred, 1000.0).astype(np.float32)
    assert depth_metrics(torch.from_numpy(other), torch.from_numpy(target)) == \
        depth_metrics(torch.from_numpy(pred), torch.from_numpy(target))


def test_depth_metrics_of_a_perfect_prediction() -> None:
    _, target = random_depth(5)
    got = depth_metrics(torch.from_numpy(target.copy()), torch.from_numpy(target))
    assert got["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert got["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert got["delta1"] == pytest.approx(1.0)


def test_depth_image_without_valid_pixels_does_not_count_towards_the_average() -> None:
    pred, target = random_depth(6, shape=(3, 6, 6))
    with_empty = target.copy()
    with_empty[1] = 0.0  # no valid ground truth in image 1
    got = depth_metrics(torch.from_numpy(pred), torch.from_numpy(with_empty))
    expected = numpy_depth_metrics(pred[[0, 2]], target[[0, 2]], 1e-3, 10.0)
    for key in ("rmse", "abs_rel", "delta1"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_per_image_miou_matches_sklearn_image_by_image() -> None:
    pred, target = random_segmentation(7, shape=(4, 9, 11))
    got = per_image_miou(pred, target, NUM_CLASSES, IGNORE)
    for i in range(4):
        assert float(got[i]) == pytest.approx(mean_iou(pred[i:i + 1], target[i:i + 1], NUM_CLASSES, IGNORE))


# ----------------------------------------------------------------------------- edges and defaults


def test_miou_ignores_label_255_by_default() -> None:
    pred, target = torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, IGNORE]])
    assert mean_iou(pred, target, 2) == 1.0
    assert float(per_image_miou(pred, target, 2)[0]) == 1.0
    assert confusion_matrix(pred, target, 2).tolist() == [[1, 0], [0, 1]]
    assert [t.tolist() for t in per_image_iou(pred, target, 2)] == [[[1, 1]], [[1, 1]]]


def test_label_equal_to_the_number_of_classes_raises() -> None:
    with pytest.raises(ValueError, match=r"\[3\] outside \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3, IGNORE)


def test_out_of_range_label_error_names_at_most_five_labels() -> None:
    target = torch.arange(3, 9)  # six distinct labels outside [0, 3)
    with pytest.raises(ValueError, match=r"labels \[3, 4, 5, 6, 7\] outside"):
        confusion_matrix(torch.zeros(6, dtype=torch.long), target, 3, IGNORE)


def test_segmentation_accumulator_honours_the_task_ignore_index() -> None:
    acc = SegmentationScores(TaskInfo("segmentation", num_classes=2, ignore_index=9))
    logits = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0]]]])  # predicts [0, 1, 1]
    acc.add(logits, torch.tensor([[[0, 1, 9]]]))
    assert acc.summary() == {"miou": 1.0, "pixel_acc": 1.0} and acc.pixels == 2
    assert acc.per_image()["union"].tolist() == [[1, 1]]


def test_segmentation_image_with_one_labelled_pixel_scores_pixel_accuracy_one() -> None:
    acc = SegmentationScores(TaskInfo("segmentation", num_classes=2, ignore_index=IGNORE))
    acc.add(torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]]), torch.tensor([[[0, IGNORE]]]))
    assert acc.per_sample == [1.0] and acc.summary()["pixel_acc"] == 1.0


def test_segmentation_confusion_counts_are_exact_integers() -> None:
    """float32 counts stop being exact beyond 2**24 pixels, fewer than a segmentation val set has."""
    acc = SegmentationScores(TaskInfo("segmentation", num_classes=2, ignore_index=IGNORE))
    acc.add(torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[0]]]))
    assert acc.per_image()["inter"].dtype == acc.per_image()["union"].dtype == torch.int64


def test_miou_honours_a_custom_ignore_index() -> None:
    pred, target = torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 9, 9]])
    assert mean_iou(pred, target, 2, ignore_index=9) == 1.0
    assert float(per_image_miou(pred, target, 2, ignore_index=9)[0]) == 1.0


def test_per_image_miou_counts_single_pixel_classes() -> None:
    target = torch.tensor([[0, 1], [0, 1]])
    pred = torch.tensor([[0, 0], [0, 1]])
    # image 0: class 0 IoU 1/2, class 1 (one labelled pixel, missed) IoU 0; image 1: both IoU 1
    torch.testing.assert_close(per_image_miou(pred, target, 2), torch.tensor([0.25, 1.0], dtype=torch.float64))


def test_depth_at_exactly_min_depth_is_invalid_and_at_exactly_max_depth_is_valid() -> None:
    target = torch.tensor([[[0.5, 10.0, 2.0]]])
    pred = torch.tensor([[[7.0, 12.0, 2.0]]])  # error only on the boundary pixels
    got = depth_metrics(pred, target, min_depth=0.5, max_depth=10.0)
    assert got["rmse"] == pytest.approx(math.sqrt(4.0 / 2))  # pixels 10.0 (error 2) and 2.0 (error 0)


def test_depth_metrics_of_an_image_with_one_valid_pixel() -> None:
    target = torch.tensor([[[2.0, 0.0]]])
    got = depth_metrics(torch.tensor([[[3.0, 5.0]]]), target)
    assert got["rmse"] == pytest.approx(1.0) and got["abs_rel"] == pytest.approx(0.5)


def test_delta1_is_strict_a_ratio_of_exactly_1_25_does_not_count() -> None:
    target = torch.tensor([[[1.0, 1.0]]])
    assert depth_metrics(torch.tensor([[[1.25, 1.0]]]), target)["delta1"] == 0.5


def test_accuracy_of_one_correct_sample_is_one() -> None:
    acc = ClassificationScores(TaskInfo("classification", num_classes=2))
    acc.add(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert acc.summary() == {"acc": 1.0}


def test_segmentation_per_image_counts_are_those_of_every_batch() -> None:
    acc = SegmentationScores(TaskInfo("segmentation", num_classes=2, ignore_index=IGNORE))
    assert acc.per_image() == {}
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2 classes, 1, 2]: predicts [0, 1]
    acc.add(logits, torch.tensor([[[0, 0]]]))
    acc.add(logits, torch.tensor([[[0, 1]]]))
    got = acc.per_image()
    assert got["inter"].tolist() == [[1, 0], [1, 1]] and got["union"].tolist() == [[2, 1], [1, 1]]


def test_depth_accumulator_counts_valid_pixels_over_batches() -> None:
    acc = DepthScores(TaskInfo("depth", min_depth=1e-3, max_depth=10.0))
    assert acc.pixels == 0
    acc.add(torch.ones(1, 2, 2), torch.tensor([[[1.0, 0.0], [2.0, 3.0]]]))
    acc.add(torch.ones(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]))
    assert acc.pixels == 5


def test_depth_accumulator_without_batches_summarises_to_nan() -> None:
    summary = DepthScores(TaskInfo("depth", min_depth=1e-3, max_depth=10.0)).summary()
    assert set(summary) == {"rmse", "abs_rel", "delta1"} and all(math.isnan(v) for v in summary.values())


def test_an_image_with_no_class_present_has_per_image_miou_one() -> None:
    from ssl_robust.metrics import miou_of_counts

    inter, union = torch.tensor([[0, 0], [1, 0]]), torch.tensor([[0, 0], [2, 0]])
    torch.testing.assert_close(miou_of_counts(inter, union), torch.tensor([1.0, 0.5], dtype=torch.float64))


# ----------------------------------------------------------------------------- devices


def test_per_image_iou_counts_on_the_predictions_device(default_device_elsewhere) -> None:
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 255]]], device="cpu")
    inter, union = per_image_iou(pred, pred.clone(), num_classes=3)
    assert inter.device.type == "cpu"
    assert inter.tolist() == union.tolist() == [[1, 3, 0], [1, 0, 2]]
