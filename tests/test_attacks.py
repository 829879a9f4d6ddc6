"""The attack registry: which attacks aim at the task score (the ones its checks apply to)."""
from __future__ import annotations

from ssl_robust.attacks import ATTACKS


def test_task_attacks_and_suites_aim_at_the_task_score_embedding_attacks_and_noise_do_not() -> None:
    aiming = {name for name in ATTACKS.names() if ATTACKS.get(name).aims_at_task}
    assert {"pgd", "segpgd", "depthpgd", "standard", "apgd_ce", "apgd_t", "apgd_masked_ce", "apgd_depth_l1"} <= aiming
    assert aiming.isdisjoint({"embed", "embed_cos", "noise"})
    assert aiming == {name for name in ATTACKS.names() if not ATTACKS.get(name).on_embedding}
