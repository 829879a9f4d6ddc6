"""Sweep configs: a strict model of the grid's axes and fixed fields, and its expansion into cells.

Pure: no Ray, no MLflow. ``load_sweep`` validates the YAML and every expanded cell before anything
starts, so a bad config fails with the field's location and the allowed values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from ssl_robust.config import (
    AttackCfg,
    Budget,
    CellCfg,
    DataCfg,
    EncoderCfg,
    HeadCfg,
    StrictModel,
    apply_overrides,
    load_yaml,
)


class SweepConfigError(ValueError):
    """A sweep config that cannot run; the message names the field and what is allowed."""


def _name_to_entry(value: Any) -> Any:
    """Let an axis entry be written as a bare name: ``pgd`` means ``{name: pgd}``."""
    return {"name": value} if isinstance(value, str) else value


class EncoderEntry(EncoderCfg):
    """An encoder axis entry; ``enabled: false`` keeps it in the file but out of the grid."""

    enabled: bool = True


class DataEntry(DataCfg):
    """A data set axis entry (each with its task); unset root/n_samples come from the sweep."""


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
DataAxis = Annotated[DataEntry, BeforeValidator(_name_to_entry)]
AttackAxis = Annotated[AttackEntry, BeforeValidator(_name_to_entry)]


class SweepCfg(StrictModel):
    """Axes (encoders x datasets x attacks x eps x steps) and the fields every cell shares."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # the MLflow experiment
    description: str = ""
    encoders: list[EncoderAxis] = Field(min_length=1)
    datasets: list[DataAxis] = Field(min_length=1)
    attacks: list[AttackAxis] = Field(min_length=1)
    eps: list[Budget] = Field(min_length=1)
    steps: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [10], min_length=1)
    head: HeadCfg = Field(default_factory=HeadCfg)
    n_samples: int | None = Field(default=64, gt=0)
    data_root: Path | None = None  # a data set without root reads <data_root>/<name>
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    device: str = "auto"
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(default=1, ge=0)  # retries of a crashed trial
    max_concurrent: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _grid_is_sound(self) -> "SweepCfg":
        if self.head.checkpoint is not None:
            raise ValueError("head.checkpoint: a sweep fits its own heads; leave it unset")
        if not any(e.enabled for e in self.encoders):
            raise ValueError("encoders: every entry has enabled: false")
        for i, data in enumerate(self.datasets):
            task = data.resolved_task
            if not [a for a in self.attacks if task in _attack_tasks(a.name)]:
                raise ValueError(
                    f"datasets.{i} ({data.name}, {task}): no attack in `attacks` applies; "
                    f"allowed for {task}: {_attacks_for(task)}"
                )
        return self


def _attack_tasks(name: str) -> tuple[str, ...]:
    from ssl_robust.attacks import ATTACKS

    return ATTACKS.get(name).tasks


def _attacks_for(task: str) -> list[str]:
    from ssl_robust.attacks import ATTACKS

    return [n for n in ATTACKS.names() if task in ATTACKS.get(n).tasks]


def _find_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class found at an error location (list indices skipped)."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _find_model(field.annotation) if field is not None else None
    return model


def format_errors(err: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """One line per error: ``source: field.path: message`` (unknown keys list the allowed ones)."""
    lines = []
    for item in err.errors():
        loc = "".join(f"{p}: " if i == len(item["loc"]) - 1 else f"{p}."
                      for i, p in enumerate(item["loc"]))
        msg = item["msg"]
        parent = _model_at(root, tuple(item["loc"][:-1])) if root else None
        if item["type"] == "extra_forbidden" and parent is not None:
            msg += f"; allowed: {sorted(parent.model_fields)}"
        lines.append(f"{source}: {loc}{msg}")
    return "\n".join(lines)


def _data_cfg(sweep: SweepCfg, entry: DataEntry) -> dict[str, Any]:
    data = entry.model_dump(exclude_unset=True)
    if "n_samples" not in entry.model_fields_set:
        data["n_samples"] = sweep.n_samples
    if entry.root is None and sweep.data_root is not None:
        data["root"] = sweep.data_root / entry.name
    if data.get("root") is not None:  # trials run in their own working directory
        data["root"] = Path(data["root"]).expanduser().resolve()
    return data


def _cell(sweep: SweepCfg, enc: EncoderEntry, data: DataEntry, att: AttackEntry, eps: float,
          steps: int) -> dict[str, Any]:
    return {
        "encoder": enc.model_dump(exclude={"enabled"}, exclude_unset=True),
        "data": _data_cfg(sweep, data),
        "head": sweep.head.model_dump(exclude_unset=True),
        "attack": {**att.model_dump(exclude_unset=True), "eps": eps, "steps": steps},
        "seed": sweep.seed,
        "batch_size": sweep.batch_size,
        "device": sweep.device,
    }


def _raw_cells(sweep: SweepCfg) -> list[dict[str, Any]]:
    return [
        _cell(sweep, enc, data, att, eps, steps)
        for enc in sweep.encoders
        if enc.enabled
        for data in sweep.datasets
        for att in sweep.attacks
        if data.resolved_task in _attack_tasks(att.name)
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
        try:
            cell = CellCfg.model_validate(raw)
        except ValidationError as err:
            raise SweepConfigError(format_errors(err, f"cell {_describe(raw)}", CellCfg)) from err
        cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def head_groups(cells: list[CellCfg]) -> dict[str, CellCfg]:
    """One representative cell per head_id: the cells that share a fitted head."""
    groups: dict[str, CellCfg] = {}
    for cell in cells:
        groups.setdefault(cell.head_id, cell)
    return groups


def parse_sweep(data: dict[str, Any], source: str = "<sweep>") -> SweepCfg:
    """Validate a sweep mapping; raise SweepConfigError naming every bad field."""
    try:
        return SweepCfg.model_validate(data)
    except ValidationError as err:
        raise SweepConfigError(format_errors(err, source, SweepCfg)) from err


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[SweepCfg, list[CellCfg]]:
    """Read, validate and expand a sweep YAML; the experiment name defaults to the file stem."""
    data = apply_overrides(load_yaml(path), list(overrides))
    data.setdefault("name", Path(path).stem)
    sweep = parse_sweep(data, str(path))
    return sweep, expand(sweep)
