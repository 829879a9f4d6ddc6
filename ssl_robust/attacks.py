"""Named attacks: which objective the PGD engine ascends, on which output, for which tasks.

Light on purpose (no torch): configs check attack names and their tasks against this registry.
"""
from __future__ import annotations

from dataclasses import dataclass

from ssl_robust.registry import Registry


@dataclass(frozen=True)
class AttackSpec:
    objective: str  # name in objectives.OBJECTIVES (the function of the same name)
    label: str  # how tables and plots name it
    tasks: tuple[str, ...] | None = None  # None: every task
    on_embedding: bool = False  # ascends a distance on the encoder's representation (no labels)
    gradient_free: bool = False  # only the random start: uniform noise in the eps-ball, no steps

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


ATTACKS: Registry[AttackSpec] = Registry("attack")
ATTACKS.register("embed")(AttackSpec("embed_l2", "EmbedAttack", on_embedding=True))
ATTACKS.register("embed_cos")(AttackSpec("embed_cos", "EmbedAttack (cos)", on_embedding=True))
# The baseline every gradient attack must beat: its loss is the embedding's distance under noise.
ATTACKS.register("noise")(AttackSpec("embed_l2", "Uniform noise", on_embedding=True, gradient_free=True))
ATTACKS.register("pgd")(AttackSpec("cross_entropy", "PGD", ("classification",)))
ATTACKS.register("segpgd")(AttackSpec("segpgd", "SegPGD", ("segmentation",)))
ATTACKS.register("depthpgd")(AttackSpec("silog", "DepthPGD (SILog)", ("depth",)))


def attacks_for(task: str) -> list[str]:
    """Names of the attacks that apply to ``task``."""
    return [name for name in ATTACKS.names() if ATTACKS.get(name).applies_to(task)]


def task_attack(task: str) -> str | None:
    """The task's own downstream attack (not an embedding attack), if it has one."""
    own = [name for name in attacks_for(task) if ATTACKS.get(name).tasks is not None]
    return own[0] if own else None


def check_applies(attack: str, task: str) -> None:
    """The one applicability check: raise naming the attack, the task and the allowed attacks."""
    if not ATTACKS.get(attack).applies_to(task):
        raise ValueError(f"attack.name {attack!r} does not apply to task {task!r}; "
                         f"allowed: {attacks_for(task)}")
