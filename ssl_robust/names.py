"""What can be named in a config: one line per encoder alias, data set, attack and task, for
``ssl-robust list`` (``cmd_list``: it needs no more than these registries, so it answers fast)."""
from __future__ import annotations

import argparse

from ssl_robust.aliases import ENCODERS
from ssl_robust.attacks import ATTACKS, AttackSpec
from ssl_robust.data.catalog import DATASETS
from ssl_robust.tasks import TASKS


def encoder_lines() -> list[str]:
    lines = [f"{name:<16} {spec.timm_name} @ {spec.image_size} px" + ("" if spec.pretrained else " (random init)")
             for name, spec in ((n, ENCODERS.get(n)) for n in ENCODERS.names())]
    return lines + ["(any timm ViT name)     e.g. vit_small_patch16_224.augreg_in21k"]


def dataset_lines() -> list[str]:
    return [f"{name:<16} {', '.join(spec.infos)}" + ("" if spec.needs_root else " (offline)")
            for name, spec in ((n, DATASETS.get(n)) for n in DATASETS.names())]


def attack_lines() -> list[str]:
    def tasks(spec: AttackSpec) -> str:
        return ", ".join(sorted({pair.split(":")[0] for pair in spec.suite})) if spec.suite else \
            ("every task" if spec.tasks is None else ", ".join(spec.tasks))
    return [f"{name:<22} {spec.label} [{spec.optimizer if not spec.gradient_free else 'no gradient'}] ({tasks(spec)})"
            for name, spec in ((n, ATTACKS.get(n)) for n in ATTACKS.names())]


def task_lines() -> list[str]:
    return [f"{name:<16} {spec.label} {spec.arrow()}, attacks: {', '.join(spec.attacks)}"
            for name, spec in ((n, TASKS.get(n)) for n in TASKS.names())]


LISTS = {"encoders": encoder_lines, "datasets": dataset_lines, "attacks": attack_lines, "tasks": task_lines}


def cmd_list(args: argparse.Namespace, cfg: None = None) -> int:
    """One line per name that configs accept: of ``args.what``, or of every kind under its heading."""
    for what in [args.what] if args.what else list(LISTS):
        if not args.what:
            print(f"{what}:")
        print("\n".join(("  " if not args.what else "") + line for line in LISTS[what]()))
    return 0
