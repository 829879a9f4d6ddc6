"""Search config validation (pure: no torch, Ray, Optuna or MLflow)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssl_robust.config_file import ConfigError
from ssl_robust.search_config import (SPACE_KEYS, describe_space, load_search, normalized, parse_search,
                                      trial_config)
from tests.helpers import REPO_ROOT, merge

QUICKSTART = REPO_ROOT / "sweeps" / "deacl_search_quickstart.yaml"


def search_data(space: dict[str, Any] | None = None, **updates: Any) -> dict[str, Any]:
    """The quickstart's mapping with ``updates`` deep-merged in and ``space`` (if given) replacing its own."""
    data = merge(yaml.safe_load(QUICKSTART.read_text()), updates)
    return {**data, "space": space} if space is not None else data


def errors_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_search(data, "s.yaml")
    return str(info.value)


def test_quickstart_loads_with_every_field_resolved() -> None:
    search = load_search(QUICKSTART)
    assert search.name == "deacl_search_quickstart" and search.n_trials == 4
    assert search.deacl.encoder.name == "tiny_dinov2" and search.deacl.epochs == 2
    assert set(search.space) <= set(SPACE_KEYS)
    assert search.storage_url == f"sqlite:///{Path.cwd().resolve() / 'optuna.db'}"
    assert len(describe_space(search)) == len(search.space)


def test_poster_search_loads_with_an_absolute_data_root() -> None:
    search = load_search(REPO_ROOT / "sweeps" / "deacl_search.yaml")
    assert search.deacl.encoder.name == "dino_vitb16" and search.deacl.epochs == 101
    assert search.deacl.data.root.is_absolute() and search.resources.gpu == 1
    assert set(search.space) == set(SPACE_KEYS)


def test_unknown_space_key_names_it_and_the_allowed_keys() -> None:
    message = errors_of(search_data(space={"momentum": {"low": 0.1, "high": 0.9}}))
    assert "s.yaml: space.momentum" in message
    assert all(key in message for key in SPACE_KEYS)


def test_low_above_high_is_refused() -> None:
    message = errors_of(search_data(space={"gamma": {"low": 3.0, "high": 1.0}}))
    assert "space.gamma:" in message and "low (3.0) > high (1.0)" in message


def test_eps_as_fraction_text_parses_and_other_text_is_refused() -> None:
    search = parse_search(search_data(space={"attack.eps": {"low": "2/255", "high": "8/255"}}))
    assert normalized(search)["attack.eps"].high == pytest.approx(8 / 255)
    message = errors_of(search_data(space={"attack.eps": {"low": "small", "high": "8/255"}}))
    assert "space.attack.eps.low" in message and "'8/255'" in message


def test_gamma_range_below_zero_names_the_end() -> None:
    message = errors_of(search_data(space={"gamma": {"low": -1.0, "high": 2.0}}))
    assert "s.yaml: space.gamma.low: gamma: Input should be greater than or equal to 0" in message
    assert "space.gamma.high" not in message


def test_every_choice_and_integer_end_is_checked_against_deacl() -> None:
    message = errors_of(search_data(space={"attack.steps": {"low": 1, "high": 2.5},
                                           "lr": {"choices": [1e-3, 0]}}))
    assert "space.attack.steps.high: attack.steps: Input should be a valid integer" in message
    assert "space.lr.choices.1: lr: Input should be greater than 0" in message


def test_range_shape_and_log_bounds_are_checked() -> None:
    assert "log: true needs low > 0" in errors_of(search_data(space={"lr": {"low": 0, "high": 1, "log": True}}))
    assert "either {low, high, log} or {choices}" in errors_of(
        search_data(space={"gamma": {"low": 0, "high": 1, "choices": [1]}}))
    assert "space.gamma:" in errors_of(search_data(space={"gamma": {"low": 0}}))
    assert "scheduler.grace_period: must be <= deacl.epochs (2), got 3" in errors_of(
        search_data(scheduler={"grace_period": 3}))


def test_trial_config_sets_dotted_fields_over_the_base() -> None:
    search = parse_search(search_data(space={"attack.steps": {"low": 2.0, "high": 4}}))
    cfg = trial_config(search.deacl, {"attack.eps": 4 / 255, "attack.steps": 2, "lr": 1e-3})
    assert (cfg.attack.eps, cfg.attack.steps, cfg.lr) == (pytest.approx(4 / 255), 2, 1e-3)
    assert cfg.attack.step_size == search.deacl.attack.step_size and cfg.epochs == search.deacl.epochs
    assert cfg.deacl_id != search.deacl.deacl_id
    steps = normalized(search)["attack.steps"]
    assert (steps.low, steps.high) == (2, 4) and isinstance(steps.low, int)


def test_relative_sqlite_storage_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    search = parse_search(search_data(storage="sqlite:///studies/s.db"))
    assert search.storage_url == f"sqlite:///{tmp_path.resolve() / 'studies' / 's.db'}"
    assert parse_search(search_data(storage="postgresql://u:p@h/db")).storage_url == "postgresql://u:p@h/db"


def test_the_config_module_stays_light() -> None:
    code = ("import sys, ssl_robust.search_config; "
            "print(sorted({'torch', 'ray', 'optuna', 'mlflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
