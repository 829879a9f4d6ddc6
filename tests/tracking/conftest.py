"""Fixtures of the tracking tests: the cells of a tiny sweep, and one SQLite store per module (its schema
created once: migrations take seconds) in which each test keeps to experiments of its own."""
from __future__ import annotations

import pytest

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from ssl_robust.sweep_config import expand, parse_sweep
from tests.helpers import experiment_name, tiny_sweep


@pytest.fixture(scope="module")
def cells() -> list[CellCfg]:
    """The cells of ``tiny_sweep("t")``: two encoders, EmbedAttack and PGD, eps 0 and 8/255."""
    return expand(parse_sweep(tiny_sweep("t")))


@pytest.fixture(scope="module")
def uri(module_tracking_uri: str) -> str:
    """This module's SQLite tracking store, with its schema created."""
    tracking.ensure_experiment("schema", module_tracking_uri)
    return module_tracking_uri


@pytest.fixture()
def store(uri: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """The module's tracking URI and an experiment of this test's own (named ``experiment_name``)."""
    return uri, tracking.ensure_experiment(experiment_name(request), uri)
