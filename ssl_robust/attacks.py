"""Named attacks: which objective the engine ascends, with which optimiser, on which output, for
which tasks; and the ``standard`` suite of each task.

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
    optimizer: str = "pgd"  # the engine's optimiser unless attack.optimizer says otherwise: pgd | apgd
    targeted: bool = False  # targeted over the top classes of the clean output (APGD-T): one run per target
    suite: tuple[str, ...] = ()  # a suite: its members by task, as "task:attack" pairs

    @property
    def aims_at_task(self) -> bool:
        """Searches for a worse task score: not uniform noise, nor an embedding attack (which pushes
        the representation and may leave the task score slightly better). The checks on task
        scores (no better than clean, monotone in eps, at least as harmful as noise) apply to these."""
        return not self.gradient_free and not self.on_embedding

    def applies_to(self, task: str) -> bool:
        if self.suite:
            return any(pair.startswith(f"{task}:") for pair in self.suite)
        return self.tasks is None or task in self.tasks


ATTACKS: Registry[AttackSpec] = Registry("attack")
ATTACKS.register("embed")(AttackSpec("embed_l2", "EmbedAttack", on_embedding=True))
ATTACKS.register("embed_cos")(AttackSpec("embed_cos", "EmbedAttack (cos)", on_embedding=True))
# The baseline every gradient attack must beat: its loss is the embedding's distance under noise.
ATTACKS.register("noise")(AttackSpec("embed_l2", "Uniform noise", on_embedding=True, gradient_free=True))
ATTACKS.register("pgd")(AttackSpec("cross_entropy", "PGD", ("classification",)))
ATTACKS.register("segpgd")(AttackSpec("segpgd", "SegPGD", ("segmentation",)))
ATTACKS.register("depthpgd")(AttackSpec("silog", "DepthPGD (SILog)", ("depth",)))
# The field's strongest evaluations: APGD (Croce & Hein 2020) on AutoAttack's and SEA's losses.
_CLS, _SEG, _DEPTH = ("classification",), ("segmentation",), ("depth",)
ATTACKS.register("apgd_ce")(AttackSpec("cross_entropy", "APGD-CE", _CLS, optimizer="apgd"))
ATTACKS.register("apgd_dlr")(AttackSpec("dlr", "APGD-DLR", _CLS, optimizer="apgd"))
ATTACKS.register("apgd_t")(AttackSpec("dlr_targeted", "APGD-T", _CLS, optimizer="apgd", targeted=True))
ATTACKS.register("apgd_masked_ce")(AttackSpec("seg_masked_ce", "APGD masked CE", _SEG, optimizer="apgd"))
ATTACKS.register("apgd_balanced_ce")(AttackSpec("seg_balanced_ce", "APGD balanced CE", _SEG, optimizer="apgd"))
ATTACKS.register("apgd_js")(AttackSpec("seg_js", "APGD JS", _SEG, optimizer="apgd"))
ATTACKS.register("apgd_masked_spherical")(AttackSpec("seg_masked_spherical", "APGD masked spherical", _SEG,
                                                     optimizer="apgd"))
ATTACKS.register("apgd_depth_l1")(AttackSpec("depth_l1", "APGD depth L1", _DEPTH, optimizer="apgd"))
ATTACKS.register("apgd_depth_l2")(AttackSpec("depth_l2", "APGD depth L2", _DEPTH, optimizer="apgd"))
ATTACKS.register("apgd_depth_log")(AttackSpec("depth_log_l1", "APGD log-depth L1", _DEPTH, optimizer="apgd"))
# AutoAttack's cascade (APGD-CE, then APGD-T on what is left) for classification; SEA's four losses,
# each image's worst, for segmentation; depth's L1, L2 and log-L1, each image's worst.
ATTACKS.register("standard")(AttackSpec("", "Standard suite", optimizer="apgd", suite=(
    "classification:apgd_ce", "classification:apgd_t",
    "segmentation:apgd_masked_ce", "segmentation:apgd_balanced_ce", "segmentation:apgd_js",
    "segmentation:apgd_masked_spherical",
    "depth:apgd_depth_l1", "depth:apgd_depth_l2", "depth:apgd_depth_log")))


def suite_members(attack: str, task: str) -> list[str]:
    """The attacks a suite runs on ``task``, in order; a plain attack is its own one member."""
    spec = ATTACKS.get(attack)
    if not spec.suite:
        return [attack]
    return [member for pair in spec.suite for t, member in [pair.split(":")] if t == task]


def target_ranks(num_classes: int, targets: int) -> tuple[int, ...]:
    """APGD-T's target classes as ranks of the clean output (2 = the runner-up): ``targets`` of them,
    at most ``num_classes - 1``; none below the 4 classes targeted DLR needs."""
    return tuple(range(2, min(targets, num_classes - 1) + 2)) if num_classes >= 4 else ()


def engine_runs(attack: str, task: str, num_classes: int, targets: int) -> int:
    """Engine runs per batch: 1 for a plain attack; a suite's members, APGD-T once per target."""
    return sum(len(target_ranks(num_classes, targets)) if ATTACKS.get(name).targeted else 1
               for name in suite_members(attack, task))


def attacks_for(task: str) -> list[str]:
    """Names of the attacks that apply to ``task``."""
    return [name for name in ATTACKS.names() if ATTACKS.get(name).applies_to(task)]


def task_attack(task: str) -> str | None:
    """The task's own downstream attack of the poster (PGD, SegPGD, DepthPGD: fixed-step PGD on a task
    loss, not an embedding attack), if it has one."""
    own = [name for name in attacks_for(task) if ATTACKS.get(name).tasks is not None
           and ATTACKS.get(name).optimizer == "pgd" and not ATTACKS.get(name).suite]
    return own[0] if own else None


def check_applies(attack: str, task: str) -> None:
    """The one applicability check: raise naming the attack, the task and the allowed attacks."""
    if not ATTACKS.get(attack).applies_to(task):
        raise ValueError(f"attack.name {attack!r} does not apply to task {task!r}; "
                         f"allowed: {attacks_for(task)}")
