"""Phase 1 of a cell: fit the linear head on the frozen encoder (``prepare_head``, saved as
safetensors) or load a fitted one (``load_head``); and ``Timed``, the loader wrapper that counts the
seconds spent waiting for data (``time/*data_seconds``).
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_robust.config import CellCfg
from ssl_robust.data.load import load_split, task_info
from ssl_robust.devices import resolve_device
from ssl_robust.encoders import Encoder, ResolvedEncoder, create_encoder, local_file, resolve_encoder
from ssl_robust.heads import AugmentedFeatures, TokenKeep, extract_features, fit_head
from ssl_robust.tasks import TASKS, TaskSpec


class Timed:
    """A loader's batches, with the seconds spent waiting for them (``time/data_seconds``)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.dataset, self.seconds = loader, loader.dataset, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch


def fit_splits(cfg: CellCfg, size: int) -> tuple[Dataset, Dataset]:
    """The train and val splits a head is fitted on, square; a dense task's train images under
    ``head.augment: crop_flip`` keep their aspect ratio (short side S), for random S x S crops."""
    crops = cfg.head.augment == "crop_flip" and TASKS.get(cfg.data.resolved_task).token_grid
    train, _ = load_split(cfg.data, "train", size, seed=cfg.seed, sizing="short_side" if crops else "square")
    val, _ = load_split(cfg.data, "val", size, seed=cfg.seed)
    return train, val


def _tokens_kept(cfg: CellCfg, task: TaskSpec) -> TokenKeep:
    """What the head reads of the patch tokens: the grid, their mean, or nothing (CLS only)."""
    if task.token_grid:
        return "grid"
    return "mean" if cfg.head.classifier_input == "cls_patch_mean" else "none"


def fit_cell_head(cfg: CellCfg, encoder: Encoder, splits: tuple[Dataset, Dataset],
         device: torch.device) -> tuple[nn.Module, dict[str, float]]:
    """Fit the head: on train features cached once, or (``head.augment``) computed from freshly
    augmented images every epoch; the validation features are cached."""
    start = time.perf_counter()
    task, info = TASKS.get(cfg.data.resolved_task), task_info(cfg.data)
    head = task.build_head(info, encoder.embed_dim, cfg.head)
    tokens, loader = _tokens_kept(cfg, task), cfg.loader.model_dump()
    extract = functools.partial(extract_features, encoder, device=device, tokens=tokens,
                                storage=cfg.head.features, precision=cfg.precision)
    train_loader, val_loader = (Timed(DataLoader(split, batch_size=cfg.head.batch_size, shuffle=False, **loader))
                                for split in splits)
    if cfg.head.augment == "none":
        train = extract(train_loader, desc="train features")
    else:
        train = AugmentedFeatures(encoder, splits[0], device, augment=cfg.head.augment, size=encoder.image_size,
                                  tokens=tokens, precision=cfg.precision, loader_kwargs=loader)
    with train, extract(val_loader, desc="val features") as val:
        head, metrics = fit_head(head, train, val, loss_fn=task.loss(info, cfg.head),
                                 val_score=functools.partial(task.validation_score, info),
                                 epochs=cfg.head.epochs, lr=cfg.head.lr,
                                 weight_decay=cfg.head.weight_decay, batch_size=cfg.head.batch_size,
                                 seed=cfg.seed, device=device, optimizer=cfg.head.optimizer,
                                 schedule=cfg.head.schedule, warmup_steps=cfg.head.warmup_steps)
        metrics["head/feature_bytes"] = float(train.nbytes() + val.nbytes())
    metrics["time/head_seconds"] = time.perf_counter() - start
    metrics["time/head_data_seconds"] = (train_loader.seconds + val_loader.seconds
                                         + getattr(train, "data_seconds", 0.0))
    return head, metrics


def prepare_head(cfg: CellCfg, out_path: Path, resolved: ResolvedEncoder | None = None) -> dict[str, float]:
    """Phase 1: fit the head for (encoder, data set, head config, seed) and save it (safetensors);
    ``resolved``: the encoder as the command resolved it (None: resolved here)."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    resolved = resolved or resolve_encoder(cfg.encoder)
    splits = fit_splits(cfg, resolved.image_size)  # a missing data set fails here, before any model is built
    encoder = create_encoder(cfg.encoder, resolved).to(device)
    head, metrics = fit_cell_head(cfg, encoder, splits, device)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in head.state_dict().items()}, str(out_path))
    return metrics


def load_head(cfg: CellCfg, encoder: Encoder, path: str) -> nn.Module:
    """The head saved by ``prepare_head`` at a local ``path``."""
    head = TASKS.get(cfg.data.resolved_task).build_head(task_info(cfg.data), encoder.embed_dim, cfg.head)
    head.load_state_dict(load_file(str(local_file(path))))
    return head.eval()
