"""Config files: a YAML file read once, ``key=value`` overrides set by one dotted setter, the
command's kind checked, validated into a model, and one error formatter whose lines name each bad
field and what is allowed (``ConfigError``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set ``a.b.c`` in a nested dict, making the sections on the way; ValueError when one of them
    is not a section."""
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key!r}: {part!r} is not a section")
    node[leaf] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            set_dotted(data, key, yaml.safe_load(raw))
        except ValueError as err:
            raise ValueError(f"override {err}") from err
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, read once; ConfigError naming the file (and the line of a
    syntax error) when it cannot be read, does not parse, is empty or is not a mapping."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = (f" ({err.context} opened at line {err.context_mark.line + 1})"
                   if err.context and err.context_mark and err.problem else "")
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}{context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from err
    if data is None:
        raise ConfigError(f"{path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


class ConfigError(ValueError):
    """A config that cannot run; the message names each bad field and what is allowed."""


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
    """One line per error: ``source: field.path: message (got ...)``; unknown keys list the allowed."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = item["msg"]
        parent = _model_at(root, tuple(item["loc"][:-1])) if root else None
        if item["type"] == "extra_forbidden" and parent is not None:
            msg += f"; allowed: {sorted(parent.model_fields)}"
        elif not isinstance(item.get("input"), (dict, list)) and repr(item.get("input")) not in msg:
            msg += f" (got {item.get('input')!r})"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """``model.model_validate(data)``, raising ConfigError with one line per bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source, model)) from err


def read_config(path: str | Path, overrides: list[str] = (), command: str | None = None) -> dict[str, Any]:
    """A YAML file's mapping, read once, with ``key=value`` overrides applied; with ``command``, a
    config of another command's kind is refused naming the right one (``check_config_kind``)."""
    data = load_yaml(path)
    if command is not None:
        check_config_kind(data, command, path)
    try:
        return apply_overrides(data, list(overrides))
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


# What each command reads, told apart by top-level keys only that kind has (checked in this order).
CONFIG_KINDS = (("search", {"space", "n_trials"}), ("deacl-sweep", {"grid", "benchmark"}),
                ("sweep", {"encoders", "datasets", "attacks"}), ("deacl", {"gamma", "probe", "dense_weight"}),
                ("run", {"attack", "head", "batch_size"}))


def config_kind(data: dict[str, Any]) -> str | None:
    """The command a config's mapping belongs to (``run``, ``sweep``, ``deacl``, ``deacl-sweep``,
    ``search``), from its top-level keys; None if none fits."""
    return next((command for command, keys in CONFIG_KINDS if keys & set(data)), None)


def check_config_kind(data: dict[str, Any], command: str, path: str | Path) -> None:
    """ConfigError naming the right command when a config of another kind is given to ``command``."""
    kind = config_kind(data)
    if kind is not None and kind != command:
        raise ConfigError(f"{path}: a {kind} config (it has {sorted(dict(CONFIG_KINDS)[kind] & set(data))}), not a "
                          f"{command} config; run it with `ssl-robust {kind} {path}`")


def load_config(model: type[M], path: str | Path, overrides: list[str] = (), command: str | None = None) -> M:
    """Read a YAML file, apply ``key=value`` overrides and validate it as ``model``."""
    return validate(model, read_config(path, overrides, command), str(path))
