"""The attack registry (``ssl_robust.attacks``): which attacks aim at the task score (the ones its checks
apply to), and how many engine runs a named attack makes."""
from __future__ import annotations

from ssl_robust.attacks import ATTACKS, engine_runs


def test_task_attacks_and_suites_aim_at_the_task_score_embedding_attacks_and_noise_do_not() -> None:
    aiming = {name for name in ATTACKS.names() if ATTACKS.get(name).aims_at_task}
    assert {"pgd", "segpgd", "depthpgd", "standard", "apgd_ce", "apgd_t", "apgd_masked_ce", "apgd_depth_l1"} <= aiming
    assert aiming.isdisjoint({"embed", "embed_cos", "noise"})
    assert aiming == {name for name in ATTACKS.names() if not ATTACKS.get(name).on_embedding}


def test_engine_runs_count_apgd_t_once_per_target() -> None:
    assert engine_runs("standard", "classification", 10, 9) == 1 + 9
    assert engine_runs("standard", "segmentation", 21, 9) == 4
    assert engine_runs("pgd", "classification", 10, 9) == 1
