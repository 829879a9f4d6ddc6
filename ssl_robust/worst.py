"""Worst case over attacks: per test item, which attack's result to keep so the aggregate is as bad as possible.

A metric that is a mean of per-item scores (accuracy, RMSE per image) is worst when each item takes its
worst attack. mIoU is a ratio of sums (per class, summed intersections over summed unions, then the mean
over classes present), which is not monotone in per-image mIoU: keeping each image's lowest per-image
mIoU can end above some attack's own mIoU. So the mIoU choice starts from the attack whose own mIoU is
lowest and makes only switches that strictly lower the aggregate (a local search over items); it is
therefore never above any attack's own mIoU. The per-image choice is a second starting point, and the
lower of the results is kept.
"""
from __future__ import annotations

import numpy as np

PASSES = 10


def _miou_rows(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU of summed per-class counts ``[..., C]`` over classes with union > 0; NaN where none is."""
    present = union > 0
    count = present.sum(-1)
    total = np.where(present, inter / np.where(present, union, 1), 0.0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _worst_first(values: np.ndarray) -> np.ndarray:
    """``values`` as a minimisation key: NaN ranks last."""
    return np.where(np.isnan(values), np.inf, values)


def miou_of(inter: np.ndarray, union: np.ndarray) -> float:
    """mIoU of items ``[N, C]``: per class, summed intersection over summed union; mean over classes present."""
    return float(_miou_rows(np.asarray(inter, float).sum(0), np.asarray(union, float).sum(0)))


def _search(inter: np.ndarray, union: np.ndarray, pick: np.ndarray, passes: int = PASSES) -> np.ndarray:
    """Local search from ``pick``: switch an item's attack whenever that strictly lowers the aggregate."""
    pick = pick.copy()
    items = np.arange(pick.size)
    total_i, total_u = inter[pick, items].sum(0), union[pick, items].sum(0)
    for _ in range(passes):
        changed = False
        for n in items:
            cand_i = total_i + inter[:, n] - inter[pick[n], n]  # [A, C]: the sums with item n from each attack
            cand_u = total_u + union[:, n] - union[pick[n], n]
            values = _worst_first(_miou_rows(cand_i, cand_u))
            best = int(np.argmin(values))
            if values[best] < values[pick[n]]:
                pick[n], total_i, total_u, changed = best, cand_i[best], cand_u[best], True
        if not changed:
            break
    return pick


def worst_miou_pick(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per item ``[N]``, the attack (of ``inter``/``union`` ``[A, N, C]``) to keep for the lowest aggregate mIoU."""
    inter, union = np.asarray(inter, float), np.asarray(union, float)
    attacks, n = inter.shape[:2]
    own = _worst_first(np.array([miou_of(inter[a], union[a]) for a in range(attacks)]))
    single = np.full(n, int(np.argmin(own)))
    greedy = np.argmin(_worst_first(_miou_rows(inter, union)), axis=0)
    items = np.arange(n)
    candidates = [single, greedy, _search(inter, union, single), _search(inter, union, greedy)]
    values = [miou_of(inter[p, items], union[p, items]) for p in candidates]
    return candidates[int(np.argmin(_worst_first(np.array(values))))]


def worst_mean_pick(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per item ``[N]``, the attack (of ``scores`` ``[A, N]``) with the worst score; NaN only if all are, ties first."""
    scores = np.asarray(scores, float)
    filled = np.where(np.isnan(scores), np.inf if higher_is_better else -np.inf, scores)
    return np.argmin(filled, axis=0) if higher_is_better else np.argmax(filled, axis=0)
