"""Sweep configs: the benchmark grid (axes and shared cell fields) and its expansion into cells, and the
DeACL grid (fine-tunes, then the benchmark of their students).

Light (no torch, Ray or MLflow). ``load_sweep`` validates the YAML and every expanded cell before
anything starts, so a bad config fails with the field's location and the allowed values.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ssl_robust.attacks import ATTACKS, attacks_for
from ssl_robust.config import AttackCfg, Budget, CellCfg, CellFields, DataCfg, EncoderCfg, HeadCfg, StrictModel
from ssl_robust.config_file import ConfigError, read_config, set_dotted, validate
from ssl_robust.data.catalog import task_names
from ssl_robust.deacl_config import DeaclCfg, deacl_data


def _known_task(name: str) -> str:
    if name not in task_names():
        raise ValueError(f"unknown task {name!r}; allowed: {task_names()}")
    return name


TaskName = Annotated[str, AfterValidator(_known_task)]


def _name_to_entry(value: Any) -> Any:
    """Let an axis entry be written as a bare name: ``pgd`` means ``{name: pgd}``."""
    return {"name": value} if isinstance(value, str) else value


class DeaclSource(StrictModel):
    """Encoders from DeACL fine-tunes tracked in MLflow: their students at the given epochs
    (0 = the teacher), from listed runs or from every finished fine-tune of an experiment."""

    runs: list[str] = Field(default_factory=list)  # MLflow run ids of ``ssl-robust deacl`` runs
    experiment: str | None = None  # every FINISHED DeACL run of this experiment
    epochs: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> "DeaclSource":
        if bool(self.runs) == (self.experiment is not None):
            raise ValueError("set exactly one of `runs` (run ids) and `experiment` (a DeACL sweep's name)")
        return self


class EncoderEntry(EncoderCfg):
    """An encoder axis entry; ``enabled: false`` keeps it in the file but out of the grid. With
    ``deacl:`` it stands for DeACL students, resolved from MLflow before the grid expands."""

    enabled: bool = True
    deacl: DeaclSource | None = None

    @model_validator(mode="after")
    def _deacl_alone(self) -> "EncoderEntry":
        extra = sorted(self.model_fields_set - {"deacl", "enabled"})
        if self.deacl is not None and extra:
            raise ValueError(f"an entry with `deacl` takes its encoder from the DeACL run; remove {extra}")
        return self


class AttackEntry(AttackCfg):
    """An attack axis entry; eps comes from the sweep's axis, and so do the steps unless the entry
    fixes its own (a suite at its literature budget, e.g. ``{name: standard, steps: 100}``)."""

    @model_validator(mode="after")
    def _no_axis_fields(self) -> "AttackEntry":
        if "eps" in self.model_fields_set:
            raise ValueError("['eps'] is a sweep axis: set it at the top level, not per attack")
        return self


class DataEntry(DataCfg):
    """A data set axis entry; ``head:`` sets head fields for this data set's cells (a task's own
    training recipe), over the sweep's ``defaults.head``."""

    head: HeadCfg | None = None


class Resources(StrictModel):
    """Ray resources of one trial (GPU may be a fraction)."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)


EncoderAxis = Annotated[EncoderEntry, BeforeValidator(_name_to_entry)]
DataAxis = Annotated[DataEntry, BeforeValidator(_name_to_entry)]
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
    heads: dict[TaskName, HeadCfg] = Field(default_factory=dict)  # a task's head recipe, over defaults.head
    data_root: Path | None = None  # a data set without root reads <data_root>/<name>
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(default=1, ge=0)  # retries of a crashed trial
    max_concurrent: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _grid_is_sound(self) -> "SweepCfg":
        if self.defaults.head.checkpoint is not None:
            raise ValueError("defaults.head.checkpoint: a sweep fits its own heads; leave it unset")
        for where, head in [*((f"heads.{task}", h) for task, h in self.heads.items()),
                            *((f"datasets.{i}.head", d.head) for i, d in enumerate(self.datasets) if d.head)]:
            if head.checkpoint is not None:
                raise ValueError(f"{where}.checkpoint: a sweep fits its own heads; leave it unset")
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


def _data_cfg(sweep: SweepCfg, entry: DataEntry) -> dict[str, Any]:
    data = entry.model_dump(exclude_unset=True, exclude={"head"})
    if entry.root is None and sweep.data_root is not None:
        data["root"] = sweep.data_root / entry.name
    if data.get("root") is not None:  # trials run in their own working directory
        data["root"] = Path(data["root"]).expanduser().resolve()
    return data


def _head_fields(sweep: SweepCfg, data: DataEntry) -> dict[str, Any]:
    """The head fields a data set's cells set over ``defaults.head``: its task's recipe, then its own."""
    recipe = sweep.heads.get(data.resolved_task)
    fields = recipe.model_dump(exclude_unset=True) if recipe is not None else {}
    return {**fields, **(data.head.model_dump(exclude_unset=True) if data.head is not None else {})}


def _raw_cells(sweep: SweepCfg) -> list[dict[str, Any]]:
    defaults = sweep.defaults.model_dump(exclude_unset=True)
    return [
        _merge(defaults, {
            "encoder": enc.model_dump(exclude={"enabled"}, exclude_unset=True),
            "data": _data_cfg(sweep, data),
            "head": _head_fields(sweep, data),
            "attack": {**att.model_dump(exclude_unset=True), "eps": eps, "steps": steps},
        })
        for enc in sweep.encoders if enc.enabled
        for data in sweep.datasets
        for att in sweep.attacks if ATTACKS.get(att.name).applies_to(data.resolved_task)
        for eps in sweep.eps
        for steps in ([att.steps] if "steps" in att.model_fields_set else sweep.steps)
    ]


def _describe(raw: dict[str, Any]) -> str:
    return (f"encoder={raw['encoder'].get('name')} data={raw['data'].get('name')} "
            f"attack={raw['attack'].get('name')} eps={raw['attack']['eps']:.5f}")


def with_students(sweep: SweepCfg, students: Callable[[DeaclSource], list[dict[str, Any]]]) -> SweepCfg:
    """The sweep with every ``deacl:`` entry replaced by the encoder configs ``students`` finds."""
    entries: list[EncoderEntry] = []
    for i, entry in enumerate(sweep.encoders):
        if entry.deacl is None or not entry.enabled:
            entries.append(entry)
            continue
        try:
            entries += [validate(EncoderEntry, found, f"encoders.{i}.deacl") for found in students(entry.deacl)]
        except LookupError as err:
            raise ConfigError(f"encoders.{i}.deacl: {err}") from err
    return sweep.model_copy(update={"encoders": entries})


def expand(sweep: SweepCfg) -> list[CellCfg]:
    """Every cell of the grid, validated, in axis order, without duplicates (by cell_id).

    Attacks that do not apply to a data set's task are skipped; ``deacl:`` entries must have been
    replaced by their students (``with_students``).
    """
    if any(e.deacl is not None and e.enabled for e in sweep.encoders):
        raise ConfigError("encoders: replace the `deacl:` entries by their students first (with_students)")
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


def read_sweep(path: str | Path, overrides: list[str] = ()) -> SweepCfg:
    """Read and validate a sweep YAML; the experiment name defaults to the file stem."""
    data = read_config(path, overrides, "sweep")
    data.setdefault("name", Path(path).stem)
    return parse_sweep(data, str(path))


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[SweepCfg, list[CellCfg]]:
    """Read, validate and expand a sweep YAML without ``deacl:`` encoder entries."""
    sweep = read_sweep(path, overrides)
    return sweep, expand(sweep)


class DeaclBenchmark(StrictModel):
    """The benchmark grid every chosen epoch's student runs (0 = the teacher): a sweep's axes
    without encoders."""

    epochs: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    datasets: list[DataAxis] = Field(min_length=1)
    attacks: list[AttackAxis] = Field(min_length=1)
    eps: list[Budget] = Field(min_length=1)
    steps: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [10], min_length=1)
    defaults: CellFields = Field(default_factory=CellFields)
    heads: dict[TaskName, HeadCfg] = Field(default_factory=dict)
    data_root: Path | None = None


class DeaclSweepCfg(StrictModel):
    """One DeACL fine-tune per point of ``grid`` (dotted DeaclCfg fields -> values, over the base
    ``deacl`` config), then the benchmark grid on every chosen epoch of every fine-tune."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # the MLflow experiment of fine-tunes and cells
    description: str = ""
    deacl: DeaclCfg
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    benchmark: DeaclBenchmark
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(default=1, ge=0)
    max_concurrent: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _grid_is_sound(self) -> "DeaclSweepCfg":
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
        for cfg in deacl_configs(self):
            have = {0, cfg.epochs, *range(cfg.checkpoint_every, cfg.epochs + 1, cfg.checkpoint_every)}
            missing = sorted(set(self.benchmark.epochs) - have)
            if missing:
                raise ValueError(f"benchmark.epochs {missing}: a fine-tune of {cfg.epochs} epochs with "
                                 f"checkpoint_every={cfg.checkpoint_every} has checkpoints at {sorted(have)}")
        return self


def deacl_configs(sweep: DeaclSweepCfg) -> list[DeaclCfg]:
    """The fine-tunes of the grid, each validated (ConfigError names the grid point and field)."""
    base = {**sweep.deacl.model_dump(mode="json", exclude_unset=True), "name": sweep.name}
    configs = []
    for values in itertools.product(*sweep.grid.values()):
        point = dict(zip(sweep.grid, values))
        data = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(data, key, value)
        configs.append(validate(DeaclCfg, data, f"grid point {point}"))
    return configs


def benchmark_sweep(sweep: DeaclSweepCfg, runs: list[str]) -> SweepCfg:
    """The benchmark sweep of the students of ``runs`` (``deacl:`` entries, resolved later)."""
    bench = sweep.benchmark.model_dump(exclude={"epochs"}, exclude_unset=True)
    return parse_sweep({**bench, "name": sweep.name, "description": sweep.description,
                        "encoders": [{"deacl": {"runs": runs, "epochs": sweep.benchmark.epochs}}],
                        "resources": sweep.resources.model_dump(), "max_failures": sweep.max_failures,
                        "max_concurrent": sweep.max_concurrent}, f"{sweep.name}: benchmark")


@dataclass(frozen=True)
class Grid:
    """A validated sweep and the cells of its plain encoder entries, expanded once. The cells of
    ``deacl:`` entries (students found in the tracking store) are expanded when the sweep runs."""

    sweep: SweepCfg
    cells: list[CellCfg]

    @property
    def has_students(self) -> bool:
        return any(entry.deacl is not None for entry in self.sweep.encoders)


def plan_grid(sweep: SweepCfg) -> Grid:
    """The sweep with its plain entries' cells (every cell validated: ConfigError names a bad one)."""
    return Grid(sweep, expand(sweep.model_copy(update={"encoders": [e for e in sweep.encoders if e.deacl is None]})))


def grid_data(grid: Grid) -> list[DataCfg]:
    """The data configs a sweep reads: its cells', or with student entries only, those of the
    grid under the defaults' encoder (no tracking store needed)."""
    return [cell.data for cell in grid.cells] if grid.cells else _default_encoder_data(grid.sweep)


def deacl_sweep_data(sweep: DeaclSweepCfg) -> list[DataCfg]:
    """The data configs of a DeACL sweep: its fine-tunes' and its benchmark grid's."""
    bench = benchmark_sweep(sweep, ["preflight"])
    return [deacl_data(cfg) for cfg in deacl_configs(sweep)] + _default_encoder_data(bench)


def _default_encoder_data(sweep: SweepCfg) -> list[DataCfg]:
    """The data configs of a grid expanded under the defaults' encoder (no tracking store needed)."""
    return [cell.data for cell in expand(sweep.model_copy(update={"encoders": [EncoderEntry()]}))]
