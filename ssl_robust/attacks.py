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
    tasks: tuple[str, ...] | None = None  # None: every task (an attack on the embedding)

    @property
    def on_embedding(self) -> bool:
        """Attacks the encoder's representation (task-agnostic, no labels)."""
        return self.tasks is None

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


ATTACKS: Registry[AttackSpec] = Registry("attack")
ATTACKS.register("embed")(AttackSpec("embed_l2", "EmbedAttack"))
ATTACKS.register("embed_cos")(AttackSpec("embed_cos", "EmbedAttack (cos)"))
ATTACKS.register("pgd")(AttackSpec("cross_entropy", "PGD", ("classification",)))
ATTACKS.register("segpgd")(AttackSpec("segpgd", "SegPGD", ("segmentation",)))
ATTACKS.register("depthpgd")(AttackSpec("silog", "DepthPGD (SILog)", ("depth",)))


def attacks_for(task: str) -> list[str]:
    """Names of the attacks that apply to ``task``."""
    return [name for name in ATTACKS.names() if ATTACKS.get(name).applies_to(task)]


def task_attack(task: str) -> str | None:
    """The task's own downstream attack (not an embedding attack), if it has one."""
    own = [name for name in attacks_for(task) if not ATTACKS.get(name).on_embedding]
    return own[0] if own else None


def check_applies(attack: str, task: str) -> None:
    """The one applicability check: raise naming the attack, the task and the allowed attacks."""
    if not ATTACKS.get(attack).applies_to(task):
        raise ValueError(f"attack.name {attack!r} does not apply to task {task!r}; "
                         f"allowed: {attacks_for(task)}")
