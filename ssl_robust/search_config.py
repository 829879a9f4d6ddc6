"""Search configs: a DeACL base config, the space Optuna samples from, ASHA and Ray settings.

Light (no torch, Ray, Optuna or MLflow). ``load_search`` validates the YAML, then builds the DeACL
config at both ends of every range (and at every choice) so that a space no trial could run fails
before Ray starts, naming the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from ssl_robust.config import StrictModel, parse_budget
from ssl_robust.config_file import ConfigError, format_errors, read_config, set_dotted, validate
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.sweep_config import Resources
from ssl_robust.uris import SQLITE, absolute_sqlite

SpaceKey = Literal["lr", "gamma", "attack.eps", "attack.steps", "weight_decay", "dense_weight"]
SPACE_KEYS: tuple[str, ...] = SpaceKey.__args__


def _number(value: Any) -> Any:
    """A fraction string such as ``"8/255"`` -> float; numbers pass through (ints stay ints)."""
    return parse_budget(value) if isinstance(value, str) else value


Number = Annotated[int | float, BeforeValidator(_number)]


class ParamSpace(StrictModel):
    """One searched field: a range ``{low, high, log}`` or a list ``{choices: [...]}``."""

    low: Number | None = None
    high: Number | None = None
    log: bool = False
    choices: list[Any] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> "ParamSpace":
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log:
                raise ValueError("give either {low, high, log} or {choices}, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give {low, high} (and optionally log: true) or {choices: [...]}")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={self.low}")
        return self


class SchedulerCfg(StrictModel):
    """ASHA over epochs: a trial is first judged after ``grace_period`` epochs."""

    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class SearchCfg(StrictModel):
    """A multi-objective Optuna search (clean and robust probe accuracy) over DeACL fields."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # MLflow experiment and Optuna study
    deacl: DeaclCfg = Field(default_factory=DeaclCfg)  # every trial starts from this config
    space: dict[SpaceKey, ParamSpace] = Field(min_length=1)
    n_trials: int = Field(ge=1)  # the study's total: a rerun only tops it up
    max_concurrent: int | None = Field(default=None, gt=0)
    storage: str | None = None  # SQLAlchemy URL; None = sqlite:///<abs cwd>/optuna.db
    scheduler: SchedulerCfg = Field(default_factory=SchedulerCfg)
    resources: Resources = Field(default_factory=Resources)
    seed: int = 0

    @property
    def storage_url(self) -> str:
        """The study's RDB URL; a relative SQLite path is made absolute."""
        return absolute_sqlite(self.storage or f"{SQLITE}{Path.cwd().resolve() / 'optuna.db'}")


def _get_dotted(cfg: DeaclCfg, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _read(base: DeaclCfg, key: str, value: Any) -> Any:
    return _get_dotted(trial_config(base, {key: value}), key)


def trial_config(base: DeaclCfg, params: dict[str, Any]) -> DeaclCfg:
    """``base`` with the dotted ``params`` (``{"attack.eps": 0.03}``) set, validated."""
    data = base.model_dump(mode="json")
    for key, value in params.items():
        set_dotted(data, key, value)
    return DeaclCfg.model_validate(data)


def normalized(search: SearchCfg) -> dict[str, ParamSpace]:
    """The space with bounds and choices as DeaclCfg reads them (``"8/255"`` -> float, 3.0 -> 3)."""
    out = {}
    for key, space in search.space.items():
        if space.choices is not None:
            update = {"choices": [_read(search.deacl, key, v) for v in space.choices]}
        else:
            update = {"low": _read(search.deacl, key, space.low), "high": _read(search.deacl, key, space.high)}
        out[key] = space.model_copy(update=update)
    return out


def check_search(search: SearchCfg, source: str = "<search>") -> None:
    """ConfigError unless a DeACL config validates at every end and choice of the space."""
    lines = []
    for key, space in search.space.items():
        ends = ({f"choices.{i}": v for i, v in enumerate(space.choices)} if space.choices is not None
                else {"low": space.low, "high": space.high})
        for end, value in ends.items():
            try:
                trial_config(search.deacl, {key: value})
            except ValidationError as err:
                lines.append(format_errors(err, f"{source}: space.{key}.{end}", DeaclCfg))
    if search.scheduler.grace_period > search.deacl.epochs:
        lines.append(f"{source}: scheduler.grace_period: must be <= deacl.epochs ({search.deacl.epochs}), "
                     f"got {search.scheduler.grace_period}")
    if lines:
        raise ConfigError("\n".join(lines))


def parse_search(data: dict[str, Any], source: str = "<search>") -> SearchCfg:
    """Validate a search mapping and its space; ConfigError names every bad field."""
    search = validate(SearchCfg, data, source)
    check_search(search, source)
    return search


def load_search(path: str | Path, overrides: list[str] = ()) -> SearchCfg:
    """Read and validate a search YAML; the name defaults to the file stem and a data root is
    made absolute (trials run in their own working directories)."""
    data = read_config(path, overrides, "search")
    data.setdefault("name", Path(path).stem)
    section = data.get("deacl", {}).get("data") if isinstance(data.get("deacl"), dict) else None
    if isinstance(section, dict) and isinstance(section.get("root"), str):
        section["root"] = str(Path(section["root"]).expanduser().resolve())
    return parse_search(data, str(path))


def describe_space(search: SearchCfg) -> list[str]:
    """One line per searched field: its choices, or its range (integer, linear or log)."""
    lines = []
    for key, space in normalized(search).items():
        if space.choices is not None:
            text = "choices [" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in space.choices) + "]"
        else:
            kind = "integer" if isinstance(space.low, int) else "log-uniform" if space.log else "uniform"
            text = f"{kind} [{space.low:.4g}, {space.high:.4g}]" + (" log" if kind == "integer" and space.log else "")
        lines.append(f"{key:<14} {text}")
    return lines
