"""Plain helpers shared by tests: the repository root, deep merge, tiny sweep and DeACL configs, SQLite
tracking URIs, free ports, dead pids, a spy that stands in for the attack engine a cell calls, and
seeded small images, labels and linear models for the engine tests."""
from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import yaml
from torch import nn

from ssl_robust.pgd import AttackResult, pgd

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 4, 4)  # small "images": 48 pixels
DIM = 3 * 4 * 4
TINY_ENCODER = "tiny_dinov2"  # the random-init test encoder of configs/tiny.yaml (ssl_robust/aliases.py)
TINY_IMAGE_SIZE = 28
TASK_ATTACKS = {"classification": "pgd", "segmentation": "segpgd", "depth": "depthpgd"}
TINY_N_SAMPLES, TINY_BATCH = 16, 8  # conftest's tiny cell: 16 test images in batches of 8


def shared_scope(scope: str):
    """A fixture scope: ``scope``, but ``function`` while mutmut records which tests reach which
    function (``MUTANT_UNDER_TEST=stats``), so that the work a shared fixture does is mapped to every
    test that reads it, not only to the first one that built it."""

    def pick(fixture_name: str, config: Any) -> str:
        return "function" if os.environ.get("MUTANT_UNDER_TEST") == "stats" else scope

    return pick


def merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``updates`` into a copy of ``base`` (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_sweep(name: str, **fields: Any) -> dict[str, Any]:
    """A small sweep on synthetic classification with the two tiny random-init encoders."""
    base: dict[str, Any] = {
        "name": name,
        "encoders": ["tiny_dinov2", "tiny_dino"],
        "datasets": [{"name": "synthetic", "task": "classification", "n_train": 64, "n_val": 32}],
        "attacks": ["embed", "pgd"],
        "eps": [0, "8/255"],
        "steps": [3],
        "defaults": {"head": {"epochs": 2}, "data": {"n_samples": 16}, "device": "cpu"},
        "resources": {"cpu": 1},
        "max_failures": 1,
    }
    return {**base, **fields}


def write_sweep(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sqlite_uri(path: Path) -> str:
    """The URI of a SQLite database in the file ``path`` (an MLflow tracking store or an Optuna storage;
    nothing is created until it is opened). Tests get their tracking store from conftest's
    ``tracking_uri`` (a fresh store per test) or ``module_tracking_uri`` (one store per module); this
    builds the URI where a test must choose the file."""
    return f"sqlite:///{path}"


def experiment_name(request: Any) -> str:
    """The experiment tests/tracking/conftest.py's ``store`` fixture makes for the test of ``request``."""
    return f"tracking-{request.node.name}"


# A few seconds on one CPU thread: 2 batches per epoch, 32-image probe.
DEACL_FAST: dict[str, Any] = {
    "encoder": {"name": TINY_ENCODER},
    "data": {"name": "synthetic", "task": "classification", "n_train": 64},
    "epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.0,
    "warmup_epochs": 0.5, "gamma": 2.0, "checkpoint_every": 1,
    "attack": {"eps": "16/255", "step_size": "4/255", "steps": 2},
    "probe": {"n_train": 32, "n_samples": 32, "epochs": 5},
    "device": "cpu",
}


def deacl_cfg(**updates: Any):
    """The validated DeaclCfg of ``DEACL_FAST`` with ``updates`` deep-merged in."""
    from ssl_robust.deacl_config import DeaclCfg

    return DeaclCfg.model_validate(merge(DEACL_FAST, updates))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class EngineSpy:
    """Stands in for the engine a cell calls: runs it, counting the sample-forwards that carry a
    gradient (one per sample and gradient step), and keeps each call's inputs, settings and result.
    ``edit(result, call)`` (optional) may change a result before the cell sees it."""

    def __init__(self, edit: Callable[[AttackResult, dict[str, Any]], None] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.edit = edit

    def __call__(self, forward, objective, x, target, **kwargs):
        ids = kwargs.get("sample_ids")
        record = {"grad_forwards": 0, "eps": kwargs["eps"], "seed": kwargs["seed"], "x": x.detach().clone(),
                  "ids": list(range(len(x))) if ids is None else list(ids), "kwargs": kwargs}

        def counted(z: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and z.requires_grad:
                record["grad_forwards"] += z.shape[0]
            return forward(z)

        result = pgd(counted, objective, x, target, **kwargs)
        record["x_adv"] = result.x_adv.detach().clone()
        record["result"] = result
        self.calls.append(record)
        if self.edit is not None:
            self.edit(result, record)
        return result

    def attacks(self) -> list[dict[str, Any]]:
        """The calls that attack at the cell's budget (not the eps = 0 check)."""
        return [c for c in self.calls if c["eps"] > 0]


def spy_engine(monkeypatch: Any, edit: Callable[[AttackResult, dict[str, Any]], None] | None = None) -> EngineSpy:
    """An ``EngineSpy`` in place of the engine's ``pgd`` for this test (conftest's ``engine_spy`` is one
    without ``edit``)."""
    from ssl_robust import engine as engine_module

    spy = EngineSpy(edit)
    monkeypatch.setattr(engine_module, "pgd", spy)
    return spy


def count_resolutions(monkeypatch: Any) -> list[str]:
    """The timm names an encoder is resolved for from now on in this process: resolving builds the
    architecture on the meta device, and nothing else does."""
    found: list[str] = []
    create = timm.create_model

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        if torch.get_default_device().type == "meta":
            found.append(name)
        return create(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", counted)
    return found


def head_cfg(make_cell_cfg: Callable[..., Any], fitted_head: Callable[[str], Path], task: str, **updates: Any):
    """``make_cell_cfg(task, **updates)`` that loads the session's fitted head of ``task`` instead of fitting one."""
    return make_cell_cfg(task, head={"checkpoint": str(fitted_head(task))}, **updates)


class LinearModel(nn.Module):
    """Logits W x + b on the flattened image; its parameters require grad on purpose."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def linear_model(num_classes: int, seed: int = 0) -> LinearModel:
    """A seeded random ``LinearModel`` on ``SHAPE`` images."""
    gen = torch.Generator().manual_seed(seed)
    return LinearModel(torch.randn(num_classes, DIM, generator=gen), 0.1 * torch.randn(num_classes, generator=gen))


def linear_forward(num_classes: int = 3, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits W x on the flattened ``SHAPE`` image, no bias and no parameters: a plain function (W is
    ``linear_model``'s weight of the same seed; made on the CPU whatever torch's default device)."""
    weight = torch.randn(num_classes, DIM, generator=torch.Generator().manual_seed(seed), device="cpu")
    return lambda x: x.flatten(1) @ weight.T


def images(n: int, low: float = 0.0, high: float = 1.0, seed: int = 1) -> torch.Tensor:
    """``n`` seeded ``SHAPE`` images, uniform in [low, high) (on the CPU whatever torch's default device)."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), device="cpu")
    return x if (low, high) == (0.0, 1.0) else low + (high - low) * x


def boundary_images(n: int) -> torch.Tensor:
    """Images whose pixels are exactly 0 or exactly 1 (plus one all-0 and one all-1 image)."""
    x = (images(n) > 0.5).float()
    x[0], x[1] = 0.0, 1.0
    return x


def labels(n: int, num_classes: int, seed: int = 2) -> torch.Tensor:
    """``n`` seeded labels in [0, num_classes)."""
    return torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def misclassified(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The engine's success function of classification: the top logit is not the label."""
    return output.argmax(1) != target


def require_torchattacks() -> Any:
    """torchattacks, the attack benchmark's peer: a skip where it is not installed, a failure in CI
    (which installs it); installed but broken is an import error, not a skip."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("torchattacks") is None:
        if os.environ.get("CI"):
            pytest.fail("torchattacks is not installed; CI installs it (pip install --no-deps torchattacks)")
        pytest.skip("torchattacks is not installed (pip install --no-deps torchattacks)")
    import torchattacks

    return torchattacks


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,2000"]


def install_chromium() -> str | None:
    """Debian's chromium: the one on PATH, else ``apt-get install -y chromium``; None if impossible."""
    found = shutil.which("chromium")
    if found or not shutil.which("apt-get"):
        return found
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    for command in (install, ["apt-get", "update"], install):  # the package lists may be missing or stale
        try:
            done = subprocess.run(sudo + command, env=env, capture_output=True, timeout=900).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done and command is install and shutil.which("chromium"):
            break
    return shutil.which("chromium")
