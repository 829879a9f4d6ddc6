"""Shared fixtures: a tiny random-init DINOv2-shaped encoder and tiny cell configs on synthetic data.

The encoder mirrors ``configs/tiny.yaml``: two blocks, width 48, 28-pixel inputs (a 2x2 patch
grid). ``init_values=1.0`` keeps LayerScale at 1 so random blocks are not identities.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
# Tiny models: one intra-op thread is as fast as two, and far faster when several test
# processes share the machine's cores (oversubscribed OpenMP threads spin).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_KWARGS: dict[str, Any] = {"depth": 2, "embed_dim": 48, "num_heads": 2, "init_values": 1.0}
TINY_IMAGE_SIZE = 28
TASK_ATTACKS = {"classification": "pgd", "segmentation": "segpgd", "depth": "depthpgd"}


def merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``updates`` into a copy of ``base`` (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="session")
def tiny_encoder_cfg() -> dict[str, Any]:
    """EncoderCfg fields of the tiny encoder (no download, no checkpoint)."""
    return {
        "name": "dinov2_vits14",
        "pretrained": False,
        "image_size": TINY_IMAGE_SIZE,
        "model_kwargs": dict(TINY_MODEL_KWARGS),
    }


@pytest.fixture(scope="session")
def tiny_cell_cfg(tiny_encoder_cfg: dict[str, Any]) -> dict[str, Any]:
    """CellCfg fields of a seconds-long classification cell on the synthetic data set."""
    return {
        "encoder": copy.deepcopy(tiny_encoder_cfg),
        "data": {"name": "synthetic", "task": "classification", "n_train": 128, "n_val": 32,
                 "n_samples": 16},
        "head": {"epochs": 15, "lr": 0.05, "batch_size": 64},
        "attack": {"name": "pgd", "eps": "8/255", "steps": 5, "norm": "linf"},
        "seed": 0,
        "batch_size": 8,
        "device": "cpu",
    }


@pytest.fixture(scope="session")
def cell_data(tiny_cell_cfg: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """``cell_data({"attack": {"eps": 0.1}})`` -> the tiny cell's raw dict with those fields changed."""

    def make(updates: dict[str, Any] | None = None) -> dict[str, Any]:
        return merge(tiny_cell_cfg, updates or {})

    return make


@pytest.fixture(scope="session")
def make_cell_cfg(tiny_cell_cfg: dict[str, Any]) -> Callable[..., Any]:
    """``make_cell_cfg(task, attack={"eps": 0}, ...)`` -> a validated CellCfg of the tiny cell on
    ``task``, attacked by the task's own attack unless ``attack={"name": ...}`` says otherwise."""
    from ssl_robust.config import CellCfg

    def make(task: str = "classification", **updates: Any) -> CellCfg:
        data = merge(tiny_cell_cfg, {"data": {"task": task}, "attack": {"name": TASK_ATTACKS[task]}})
        return CellCfg.model_validate(merge(data, updates))

    return make


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_cfg: dict[str, Any]):
    """The tiny encoder, frozen and in eval mode (shared: do not modify)."""
    from ssl_robust.config import EncoderCfg
    from ssl_robust.encoders import create_encoder

    torch.manual_seed(0)
    return create_encoder(EncoderCfg(**tiny_encoder_cfg))


@pytest.fixture(scope="session")
def fitted_head(make_cell_cfg: Callable[..., Any],
                tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``fitted_head(task)`` -> path of the head ``prepare_head`` fitted for ``make_cell_cfg(task)``
    (safetensors; fitted once per task and session, on first use)."""
    from ssl_robust.cell import prepare_head

    folder = tmp_path_factory.mktemp("heads")
    paths: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in paths:
            prepare_head(make_cell_cfg(task), folder / f"{task}.safetensors")
            paths[task] = folder / f"{task}.safetensors"
        return paths[task]

    return get


@pytest.fixture(scope="session")
def fitted_classifier(make_cell_cfg: Callable[..., Any], fitted_head: Callable[[str], Path]):
    """(model, x, y): the tiny encoder + fitted linear classifier, and 32 synthetic test images."""
    from ssl_robust.cell import load_head
    from ssl_robust.config import EncoderCfg
    from ssl_robust.data import load_split
    from ssl_robust.encoders import create_encoder
    from ssl_robust.heads import TaskModel

    cfg = make_cell_cfg("classification", data={"n_samples": 32})
    torch.manual_seed(cfg.seed)  # the same encoder weights prepare_head saw
    encoder = create_encoder(EncoderCfg(**cfg.encoder.model_dump()))
    head = load_head(cfg, encoder, str(fitted_head("classification")))
    model = TaskModel(encoder, head).eval().requires_grad_(False)
    dataset, _ = load_split(cfg.data, "test", TINY_IMAGE_SIZE, seed=cfg.seed)
    images, labels = zip(*[dataset[i] for i in range(len(dataset))])
    return model, torch.stack(images), torch.tensor(labels)
