"""Sweep configs: a strict model of the grid's axes and shared cell fields, and its expansion into cells.

Light (no torch, Ray or MLflow). ``load_sweep`` validates the YAML and every expanded cell before
anything starts, so a bad config fails with the field's location and the allowed values.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from ssl_robust.attacks import ATTACKS, attacks_for
from ssl_robust.config import (AttackCfg, Budget, CellCfg, CellFields, DataCfg, EncoderCfg, StrictModel,
                               read_config, validate)


def _name_to_entry(value: Any) -> Any:
    """Let an axis entry be written as a bare name: ``pgd`` means ``{name: pgd}``."""
    return {"name": value} if isinstance(value, str) else value


class EncoderEntry(EncoderCfg):
    """An encoder axis entry; ``enabled: false`` keeps it in the file but out of the grid."""

    enabled: bool = True


class AttackEntry(AttackCfg):
    """An attack axis entry; eps and steps come from the sweep's own axes."""

    @model_validator(mode="after")
    def _no_axis_fields(self) -> "AttackEntry":
        clash = sorted({"eps", "steps"} & self.model_fields_set)
        if clash:
            raise ValueError(f"{clash} are sweep axes: set them at the top level, not per attack")
        return self


class Resources(StrictModel):
    """Ray resources of one trial (GPU may be a fraction)."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)


EncoderAxis = Annotated[EncoderEntry, BeforeValidator(_name_to_entry)]
DataAxis = Annotated[DataCfg, BeforeValidator(_name_to_entry)]
AttackAxis = Annotated[AttackEntry, BeforeValidator(_name_to_entry)]


class SweepCfg(StrictModel):
    """Axes (encoders x datasets x attacks x eps x steps); ``defaults`` holds the cell fields every
    cell shares (an axis entry's own fields win over them)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # the MLflow experiment
    description: str = ""
    encoders: list[EncoderAxis] = Field(min_length=1)
    datasets: list[DataAxis] = Field(min_length=1)
    attacks: list[AttackAxis] = Field(min_length=1)
    eps: list[Budget] = Field(min_length=1)
    steps: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [10], min_length=1)
    defaults: CellFields = Field(default_factory=CellFields)
    data_root: Path | None = None  # a data set without root reads <data_root>/<name>
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(default=1, ge=0)  # retries of a crashed trial
    max_concurrent: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _grid_is_sound(self) -> "SweepCfg":
        if self.defaults.head.checkpoint is not None:
            raise ValueError("defaults.head.checkpoint: a sweep fits its own heads; leave it unset")
        if not any(e.enabled for e in self.encoders):
            raise ValueError("encoders: every entry has enabled: false")
        for i, data in enumerate(self.datasets):
            task = data.resolved_task
            if not [a for a in self.attacks if ATTACKS.get(a.name).applies_to(task)]:
                raise ValueError(f"datasets.{i} ({data.name}, {task}): no attack in `attacks` applies; "
                                 f"allowed for {task}: {attacks_for(task)}")
        return self


def _merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``updates`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _data_cfg(sweep: SweepCfg, entry: DataCfg) -> dict[str, Any]:
    data = entry.model_dump(exclude_unset=True)
    if entry.root is None and sweep.data_root is not None:
        data["root"] = sweep.data_root / entry.name
    if data.get("root") is not None:  # trials run in their own working directory
        data["root"] = Path(data["root"]).expanduser().resolve()
    return data


def _raw_cells(sweep: SweepCfg) -> list[dict[str, Any]]:
    defaults = sweep.defaults.model_dump(exclude_unset=True)
    return [
        _merge(defaults, {
            "encoder": enc.model_dump(exclude={"enabled"}, exclude_unset=True),
            "data": _data_cfg(sweep, data),
            "attack": {**att.model_dump(exclude_unset=True), "eps": eps, "steps": steps},
        })
        for enc in sweep.encoders if enc.enabled
        for data in sweep.datasets
        for att in sweep.attacks if ATTACKS.get(att.name).applies_to(data.resolved_task)
        for eps in sweep.eps
        for steps in sweep.steps
    ]


def _describe(raw: dict[str, Any]) -> str:
    return (f"encoder={raw['encoder'].get('name')} data={raw['data'].get('name')} "
            f"attack={raw['attack'].get('name')} eps={raw['attack']['eps']:.5f}")


def expand(sweep: SweepCfg) -> list[CellCfg]:
    """Every cell of the grid, validated, in axis order, without duplicates (by cell_id).

    Attacks that do not apply to a data set's task are skipped.
    """
    cells: dict[str, CellCfg] = {}
    for raw in _raw_cells(sweep):
        cell = validate(CellCfg, raw, f"cell {_describe(raw)}")
        cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def head_groups(cells: list[CellCfg]) -> dict[str, CellCfg]:
    """One representative cell per head_id: the cells that share a fitted head."""
    groups: dict[str, CellCfg] = {}
    for cell in cells:
        groups.setdefault(cell.head_id, cell)
    return groups


def parse_sweep(data: dict[str, Any], source: str = "<sweep>") -> SweepCfg:
    """Validate a sweep mapping; ConfigError names every bad field."""
    return validate(SweepCfg, data, source)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[SweepCfg, list[CellCfg]]:
    """Read, validate and expand a sweep YAML; the experiment name defaults to the file stem."""
    data = read_config(path, overrides)
    data.setdefault("name", Path(path).stem)
    sweep = parse_sweep(data, str(path))
    return sweep, expand(sweep)
