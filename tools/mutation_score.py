"""Mutation score per module from the last ``mutmut run`` (the ``mutants/**/*.meta`` files).

    .venv/bin/python tools/mutation_score.py [--survivors] [GLOB ...]

Prints a markdown table: mutants, killed (a test failed or the mutant timed out), survived, no tests,
not yet checked, and score = killed / (mutants - not checked). GLOBs (``fnmatch`` on mutant names,
e.g. ``ssl_robust.pgd.*``) restrict the count; ``--survivors`` lists the surviving mutants.
"""
from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check"}


def results(root: Path = Path("mutants")) -> dict[str, dict[str, str]]:
    """``{module: {mutant: status}}`` for every mutated file under ``root``."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root).with_suffix("").with_suffix("")).replace("/", ".")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[module] = {key: status_by_exit_code[code] for key, code in codes.items()}
    return out


def main(argv: list[str]) -> None:
    show = "--survivors" in argv
    globs = [a for a in argv if a != "--survivors"] or ["*"]
    rows, survivors = [], []
    for module, statuses in results().items():
        picked = {k: s for k, s in statuses.items() if any(fnmatch.fnmatch(k, g) for g in globs)}
        if not picked:
            continue
        count = Counter("killed" if s in KILLED else s for s in picked.values())
        checked = len(picked) - count["not checked"]
        score = f"{100 * count['killed'] / checked:.1f} %" if checked else "-"
        rows.append(f"| `{module}` | {len(picked)} | {count['killed']} | {count['survived']} | "
                    f"{count['no tests']} | {count['not checked']} | {score} |")
        survivors += sorted(k for k, s in picked.items() if s not in KILLED | {"not checked"})
    print("| module | mutants | killed | survived | no tests | not checked | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if show:
        print("\n".join(["", *survivors]))


if __name__ == "__main__":
    main(sys.argv[1:])
