"""DeACL robust fine-tuning (Zhang et al. 2022) of a ViT encoder, in a plain Python process.

The teacher f is the frozen encoder; the student f_R starts as a copy of it. Each batch is
augmented, attacked on the student (``deacl_loss.embed_attack``), and the student minimises
``deacl_loss.deacl_loss``. Each epoch ends with a linear probe on CLS (clean and under EmbedAttack).

Determinism: the data order of epoch e comes from a generator seeded by (seed, e); the
augmentation and attack random start of batch i of epoch e from seeds derived from (seed, e, i),
i.e. from the global step. A run resumed from an epoch-end resume file therefore ends with the
same weights as an uninterrupted run (bit-identical on the CPU).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from ssl_robust.config import DataCfg
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.data import DATASETS
from ssl_robust.data.load import deterministic_subset, load_split
from ssl_robust.deacl_names import student_file
from ssl_robust.deacl_loss import augment_batch, deacl_loss, embed_attack, probe_attack
from ssl_robust.devices import resolve_device
from ssl_robust.encoders import Encoder, ResolvedEncoder, create_encoder, resolve_encoder
from ssl_robust.precision import autocast
from ssl_robust.seeds import derive_seed

RESUME_FILE = "resume.pt"
CUDA_LOADER_WORKERS = 4  # data loading workers on CUDA; the CPU path stays in-process


class DeaclHooks:
    """Callbacks of ``fine_tune``; the defaults do nothing (subclass to log, upload or resume)."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch's probe; epoch 0 is the teacher before training (probe metrics only)."""

    def on_checkpoint(self, epoch: int, weights_path: Path, resume_path: Path) -> None:
        """After writing ``epoch_NNN.safetensors`` (timm weights) and the resume file."""

    def resume_state(self) -> Path | None:
        """A resume file to continue from, or None to start from the teacher."""
        return None


@dataclass
class _Run:
    """Everything one fine-tune carries from epoch to epoch."""

    cfg: DeaclCfg
    device: torch.device
    teacher: Encoder
    student: Encoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_set: Dataset
    probe_sets: tuple[Dataset, Dataset]  # (val split: fit, test split: score)
    num_classes: int


def lr_factor(step: int, warmup_steps: float, total_steps: int, start: float | None = None) -> float:
    """Linear warm-up over ``warmup_steps`` schedule steps, then cosine decay to 0 at ``total_steps``.

    Without ``start`` the warm-up is ``(step + 1) / warmup_steps``. With ``start`` (the first factor,
    ``warmup_start_lr / lr``) it goes from ``start`` at step 0 to 1 at step ``warmup_steps - 1``, as
    the seed's ``LinearWarmupCosineAnnealingLR`` (pl_bolts) does.
    """
    if step < warmup_steps:
        if start is None:
            return (step + 1) / warmup_steps
        ramp = min(step / (warmup_steps - 1), 1.0) if warmup_steps > 1 else 0.0
        return start + ramp * (1 - start)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def schedule(cfg: DeaclCfg, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr factor of optimizer step ``s``: per step, or (``warmup_unit: epoch``) constant within
    an epoch, the epoch's index being the schedule step, as Lightning steps the seed's scheduler."""
    start = None if cfg.warmup_start_lr is None else cfg.warmup_start_lr / cfg.lr
    if cfg.warmup_unit == "epoch":
        return lambda s: lr_factor(s // steps_per_epoch, cfg.warmup_epochs, cfg.epochs, start)
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    return lambda s: lr_factor(s, warmup, total, start)


def _autocast(run: _Run) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA only (training in half precision on a CPU is slower); fp32 elsewhere."""
    return autocast(run.cfg.precision if run.device.type == "cuda" else "fp32", run.device)


def _whole_train(data: DataCfg, size: int, seed: int) -> Dataset:
    """The train and val splits together (for a real data set: its whole official train split, which
    val is carved from), limited to ``data.n_train`` images."""
    everything = data.model_copy(update={"n_train": None, "n_val": None})
    parts = [load_split(everything, split, size, seed=seed)[0] for split in ("train", "val")]
    return deterministic_subset(ConcatDataset(parts), data.n_train, seed)


def _load_data(cfg: DeaclCfg, size: int) -> tuple[Dataset, tuple[Dataset, Dataset], int]:
    """(train split, (probe fit split, probe test split), number of classes); fails before any model
    is built when the data set is missing or has no classification task for the probe.

    With ``val_fraction: 0`` nothing is held out: DeACL trains on the whole train split and the probe
    fits on ``probe.n_train`` of those images (DeACL never sees their labels).
    """
    infos = DATASETS.get(cfg.data.name).infos
    if "classification" not in infos:
        raise ValueError(f"data.name: DeACL's linear probe needs a classification task, but data set "
                         f"{cfg.data.name!r} has only {sorted(infos)}")
    update: dict[str, Any] = {"task": "classification", "n_val": cfg.probe.n_train, "n_samples": cfg.probe.n_samples}
    if cfg.val_fraction:
        update["val_fraction"] = cfg.val_fraction
    data = cfg.data.model_copy(update=update)
    test, info = load_split(data, "test", size, seed=cfg.seed)
    if cfg.val_fraction == 0:
        train = _whole_train(data, size, cfg.seed)
        fit = deterministic_subset(train, cfg.probe.n_train, derive_seed(cfg.seed, "probe_fit"))
    else:
        train, _ = load_split(data, "train", size, seed=cfg.seed)
        fit, _ = load_split(data, "val", size, seed=cfg.seed)
    return train, (fit, test), info.num_classes


def _optimization(cfg: DeaclCfg, student: Encoder, device: torch.device, steps_per_epoch: int
                  ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """Optimizer, warm-up + cosine schedule (``schedule``), and the fp16 gradient scaler (CUDA only)."""
    params = list(student.model.parameters())
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
    return optimizer, scheduler, scaler


def _build(cfg: DeaclCfg, resolved: ResolvedEncoder) -> _Run:
    """Load the data (fails first), then the teacher, its trainable copy and the optimizer."""
    train, probe_sets, num_classes = _load_data(cfg, resolved.image_size)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # random-init encoders: the same teacher in every (resumed) run
    teacher = create_encoder(cfg.encoder, resolved).to(device)
    student = copy.deepcopy(teacher)
    student.model.requires_grad_(True)
    n_batches = math.ceil(len(train) / cfg.batch_size)
    optimizer, scheduler, scaler = _optimization(cfg, student, device, math.ceil(n_batches / cfg.grad_accum))
    return _Run(cfg, device, teacher, student, optimizer, scheduler, scaler, train, probe_sets, num_classes)


def _loader(run: _Run, dataset: Dataset, order: list[int] | None = None) -> DataLoader:
    workers = CUDA_LOADER_WORKERS if run.device.type == "cuda" else 0
    return DataLoader(dataset, batch_size=run.cfg.batch_size, sampler=order, num_workers=workers,
                      pin_memory=run.device.type == "cuda")


def _train_batch(run: _Run, x: torch.Tensor, epoch: int, index: int) -> dict[str, torch.Tensor]:
    """Augment, attack the student, back-propagate the DeACL loss (scaled for accumulation)."""
    cfg, b = run.cfg, x.shape[0]
    x = augment_batch(x, cfg.augment, cfg.crop_scale,
                      torch.Generator().manual_seed(derive_seed(cfg.seed, "augment", epoch, index)))
    with torch.no_grad(), _autocast(run):
        teacher = tuple(t.float() for t in run.teacher.features(x))
    run.student.eval()
    a = cfg.attack
    with _autocast(run):
        x_adv = embed_attack(run.student.features, x, teacher, dense_weight=cfg.dense_weight, eps=a.eps,
                             step_size=a.step_size, steps=a.steps, norm=a.norm, random_start=a.random_start,
                             seed=derive_seed(cfg.seed, "attack", epoch, index))
    run.student.train()
    with _autocast(run):
        cls, tokens = run.student.features(torch.cat([x, x_adv]))
    cls, tokens = cls.float(), tokens.float()
    parts = deacl_loss((cls[:b], tokens[:b]), teacher, (cls[b:], tokens[b:]), cfg.gamma, cfg.dense_weight)
    run.scaler.scale(parts["total"] / cfg.grad_accum).backward()
    return {k: v.detach() * b for k, v in parts.items()}


def _optimizer_step(run: _Run) -> None:
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the train split in the order seeded by (seed, epoch)."""
    cfg, start = run.cfg, time.perf_counter()
    order = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(
        derive_seed(cfg.seed, "order", epoch))).tolist()
    loader = _loader(run, run.train_set, order)
    sums: dict[str, torch.Tensor] = {}
    run.optimizer.zero_grad(set_to_none=True)
    for i, (x, _) in enumerate(tqdm(loader, desc=f"deacl epoch {epoch}", leave=False)):
        parts = _train_batch(run, x.to(run.device, non_blocking=True), epoch, i)
        sums = {k: sums.get(k, 0) + v for k, v in parts.items()}
        if (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader):
            _optimizer_step(run)
    seconds = time.perf_counter() - start
    n = len(run.train_set)
    metrics = {f"loss/{k}": float(v) / n for k, v in sums.items()}
    return {**metrics, "time/epoch_seconds": seconds, "throughput/images_per_s": n / seconds}


@torch.no_grad()
def _cls_features(run: _Run, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Student CLS embeddings (CPU, fp32) and labels of a split."""
    feats, labels = [], []
    for x, y in _loader(run, dataset):
        with _autocast(run):
            feats.append(run.student.embed(x.to(run.device)).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def fit_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int, lr: float,
              batch_size: int, seed: int) -> torch.nn.Linear:
    """Linear classifier on cached features (AdamW, zero init, seeded shuffles).

    It is fitted on standardised features and the standardisation is folded into the returned
    layer: fine-tuning changes the features' scale, which would otherwise change how far a fixed
    probe budget gets, and so the clean accuracy, for reasons unrelated to the features' content.
    """
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - mean) / std
    linear = torch.nn.Linear(feats.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=generator).split(batch_size):
            loss = F.cross_entropy(linear(z[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        linear.weight.div_(std)
        linear.bias.sub_(linear.weight @ mean)
    return linear.requires_grad_(False)


def _probe(run: _Run) -> dict[str, float]:
    """Fit a linear probe on the student's CLS (val split); score it clean and under EmbedAttack
    (L2 distance to the clean CLS) on the test split, with the same attack seeds every epoch."""
    cfg, p, a = run.cfg, run.cfg.probe, run.cfg.attack
    run.student.eval()
    fit_feats, fit_labels = _cls_features(run, run.probe_sets[0])
    linear = fit_probe(fit_feats, fit_labels, run.num_classes, epochs=p.epochs, lr=p.lr,
                       batch_size=p.batch_size, seed=derive_seed(cfg.seed, "probe"))
    clean_hits, adv_hits, n = 0, 0, 0
    for i, (x, y) in enumerate(tqdm(_loader(run, run.probe_sets[1]), desc="probe", leave=False)):
        x, y = x.to(run.device), torch.as_tensor(y)
        with _autocast(run):
            with torch.no_grad():
                clean = run.student.embed(x).float()
            eps, steps = (a.eps if p.eps is None else p.eps), (a.steps if p.steps is None else p.steps)
            x_adv = probe_attack(run.student.embed, x, clean, eps=eps, step_size=a.step_size, steps=steps,
                                 norm=a.norm, random_start=a.random_start, seed=derive_seed(cfg.seed, "probe", i))
            with torch.no_grad():
                adv = run.student.embed(x_adv).float()
        clean_hits += int((linear(clean.cpu()).argmax(1) == y).sum())
        adv_hits += int((linear(adv.cpu()).argmax(1) == y).sum())
        n += len(y)
    return {"probe/clean_acc": clean_hits / n, "probe/embed_acc": adv_hits / n}


def _save_checkpoint(run: _Run, work_dir: Path, epoch: int, metrics: dict[str, float]) -> tuple[Path, Path]:
    """Write the student's timm weights (safetensors) and the resume file (atomically)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in run.student.model.state_dict().items()}
    weights_path = work_dir / student_file(epoch)
    save_file(weights, str(weights_path))
    state = {"deacl_id": run.cfg.deacl_id, "epoch": epoch, "step": int(run.scheduler.last_epoch),
             "student": weights, "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "metrics": metrics}
    resume_path = work_dir / RESUME_FILE
    tmp = resume_path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(resume_path)
    return weights_path, resume_path


def _load_resume(run: _Run, path: Path) -> tuple[int, dict[str, float]]:
    """Restore student, optimizer, schedule and scaler; returns (epoch done, its metrics)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state["deacl_id"] != run.cfg.deacl_id:
        raise ValueError(f"resume file {path} belongs to DeACL run {state['deacl_id']}, "
                         f"not to this config ({run.cfg.deacl_id})")
    run.student.model.load_state_dict(state["student"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), dict(state["metrics"])


def fine_tune(cfg: DeaclCfg, work_dir: Path, hooks: DeaclHooks | None = None,
              resolved: ResolvedEncoder | None = None) -> dict[str, float]:
    """Run DeACL for ``cfg.epochs`` epochs (or the rest, from ``hooks.resume_state()``); checkpoints
    go to ``work_dir``. Returns the last epoch's metrics. ``resolved``: the encoder as the command
    resolved it (None: resolved here)."""
    hooks, work_dir = hooks or DeaclHooks(), Path(work_dir)
    run = _build(cfg, resolved or resolve_encoder(cfg.encoder))
    resume = hooks.resume_state()
    if resume is not None:
        done, metrics = _load_resume(run, Path(resume))
    else:
        done, metrics = 0, _probe(run)
        hooks.on_epoch(0, metrics)
    for epoch in tqdm(range(done + 1, cfg.epochs + 1), desc="deacl", leave=False):
        metrics = _train_epoch(run, epoch)
        metrics.update(_probe(run))
        hooks.on_epoch(epoch, metrics)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            hooks.on_checkpoint(epoch, *_save_checkpoint(run, work_dir, epoch, metrics))
    return metrics
