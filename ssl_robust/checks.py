"""Sanity checks recorded with every cell: they catch weak, broken or gradient-masked attacks."""
from __future__ import annotations

import torch

TOLERANCE = 1e-5
ZERO_GRAD_LIMIT = 0.01  # largest fraction of attacked samples allowed an all-zero input gradient


def perturbation_checks(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> dict[str, float]:
    """delta inside the eps-ball and x + delta inside [0, 1]; 1.0 = holds."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    return {
        "check/delta_in_ball": float(bool((size <= eps * (1 + TOLERANCE) + TOLERANCE).all())),
        "check/x_adv_in_box": float(bool(((x_adv >= 0) & (x_adv <= 1)).all())),
        "attack/max_delta": float(size.max()) if size.numel() else 0.0,
    }


def gradient_checks(grad_finite: bool, zero_samples: int, attacked: int, eps: float, steps: int) -> dict[str, float]:
    """Finite gradients; and, whenever the attack had a budget to spend, at most ``ZERO_GRAD_LIMIT``
    of the attacked samples with an all-zero input gradient at their first step. A sample with no
    gradient cannot be moved by a gradient attack: a saturated head (cross-entropy at float
    precision) or a non-differentiable forward masks it, and its robustness is not measured."""
    active = eps > 0 and steps > 0
    zero_frac = zero_samples / attacked if attacked else 0.0
    return {
        "check/grad_finite": float(grad_finite),
        "check/grad_nonzero": float(zero_frac <= ZERO_GRAD_LIMIT or not active),
        "attack/grad_nonzero_frac": 1.0 - zero_frac,
        "attack/grad_zero_samples": float(zero_samples),
    }


def score_checks(clean: float, adv: float, higher_is_better: bool, eps0_gap: float,
                 searched: bool = True) -> dict[str, float]:
    """eps = 0 reproduces the clean output; an attack that searches for a worse task score (not
    random noise or an embedding attack, which may help a score by chance) leaves it no better than clean."""
    checks = {"check/eps0_equals_clean": float(eps0_gap <= 1e-4), "check/eps0_max_output_gap": eps0_gap}
    if searched:
        not_better = adv <= clean + TOLERANCE if higher_is_better else adv >= clean - TOLERANCE
        checks["check/adv_not_better"] = float(not_better)
    return checks


def rescore_checks(disagreements: int) -> dict[str, float]:
    """The samples the attack reported fooled are exactly those the scored model misclassifies on
    the returned inputs (a mismatch means the attack's forward is not the scored model)."""
    return {"check/success_matches_rescore": float(disagreements == 0),
            "attack/rescore_disagreements": float(disagreements)}


def all_passed(checks: dict[str, float]) -> float:
    return float(all(v == 1.0 for k, v in checks.items() if k.startswith("check/")
                     and k != "check/eps0_max_output_gap"))
