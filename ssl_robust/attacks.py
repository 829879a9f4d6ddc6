"""Named attacks: which objective the PGD engine ascends, on which output, for which tasks."""
from __future__ import annotations

from dataclasses import dataclass

from ssl_robust.registry import Registry

TASKS = ("classification", "segmentation", "depth")


@dataclass(frozen=True)
class AttackSpec:
    objective: str  # name in OBJECTIVES
    tasks: tuple[str, ...]
    on_embedding: bool  # True: attacks the encoder's embedding (task-agnostic, no labels)


ATTACKS: Registry[AttackSpec] = Registry("attack")
ATTACKS.register("embed", "embedattack")(AttackSpec("embed_l2", TASKS, on_embedding=True))
ATTACKS.register("embed_cos")(AttackSpec("embed_cos", TASKS, on_embedding=True))
ATTACKS.register("pgd")(AttackSpec("ce", ("classification",), on_embedding=False))
ATTACKS.register("segpgd")(AttackSpec("segpgd", ("segmentation",), on_embedding=False))
ATTACKS.register("depthpgd")(AttackSpec("depth", ("depth",), on_embedding=False))
