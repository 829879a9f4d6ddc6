"""One grid point: fit (or load) a head on a frozen encoder, then measure clean and attacked scores.

``prepare_head(cfg, path)`` is phase 1 (one head per encoder x data set); ``run_cell(cfg)`` is
phase 2 and runs in a plain Python process, with or without Ray.
"""
from __future__ import annotations

import csv
import functools
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssl_robust import checks
from ssl_robust.attacks import ATTACKS
from ssl_robust.config import CellCfg
from ssl_robust.data import TaskInfo, load_split
from ssl_robust.encoders import Encoder, create_encoder, input_size, local_checkpoint
from ssl_robust.heads import TaskModel, build_head, extract_features, fit_head
from ssl_robust.metrics import confusion_matrix, depth_errors, miou_from_confusion, valid_depth_mask
from ssl_robust.objectives import OBJECTIVES
from ssl_robust.pgd import AttackResult, pgd

PRIMARY = {"classification": ("acc", True), "segmentation": ("miou", True), "depth": ("rmse", False)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _loader(cfg: CellCfg, split: str, image_size: int, batch_size: int) -> DataLoader:
    dataset, _ = load_split(cfg.data, split, image_size, seed=cfg.seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _fit_loaders(cfg: CellCfg) -> tuple[DataLoader, DataLoader]:
    size = input_size(cfg.encoder)
    return _loader(cfg, "train", size, cfg.head.batch_size), _loader(cfg, "val", size, cfg.head.batch_size)


def _fit(cfg: CellCfg, encoder: Encoder, loaders: tuple[DataLoader, DataLoader],
         device: torch.device) -> tuple[nn.Module, dict[str, float]]:
    start = time.perf_counter()
    train_loader, val_loader = loaders
    info = _head_info(cfg)
    train = extract_features(encoder, train_loader, device, desc="train features")
    val = extract_features(encoder, val_loader, device, desc="val features")
    head = build_head(info, encoder.embed_dim, cfg.head.n_bins)
    head, metrics = fit_head(head, train, val, info, epochs=cfg.head.epochs, lr=cfg.head.lr,
                             weight_decay=cfg.head.weight_decay, batch_size=cfg.head.batch_size,
                             seed=cfg.seed, device=device)
    metrics["time/head_seconds"] = time.perf_counter() - start
    return head, metrics


def _head_info(cfg: CellCfg) -> TaskInfo:
    from ssl_robust.data import DATASETS

    info = DATASETS.get(cfg.data.name).infos[cfg.data.resolved_task]
    if info.task == "depth":
        return TaskInfo("depth", min_depth=cfg.head.min_depth, max_depth=cfg.head.max_depth)
    return info


def prepare_head(cfg: CellCfg, out_path: Path) -> dict[str, float]:
    """Phase 1: fit the head for (encoder, data set, head config, seed) and save it (safetensors)."""
    from safetensors.torch import save_file

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    loaders = _fit_loaders(cfg)  # a missing data set fails here, before any model is built
    encoder = create_encoder(cfg.encoder).to(device)
    head, metrics = _fit(cfg, encoder, loaders, device)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in head.state_dict().items()}, str(out_path))
    return metrics


def load_head(cfg: CellCfg, encoder: Encoder, uri: str) -> nn.Module:
    from safetensors.torch import load_file

    head = build_head(_head_info(cfg), encoder.embed_dim, cfg.head.n_bins)
    head.load_state_dict(load_file(str(local_checkpoint(uri))))
    return head.eval()


def _attack_setup(cfg: CellCfg, model: TaskModel, info: TaskInfo):
    """(forward, objective, success_fn, target_fn) of the configured attack."""
    spec = ATTACKS.get(cfg.attack.name)
    objective = OBJECTIVES.get(spec.objective)
    if spec.objective == "segpgd":
        objective = functools.partial(objective, ignore_index=info.ignore_index)
    elif spec.objective == "depth":
        objective = functools.partial(objective, min_depth=info.min_depth)
    if spec.on_embedding:
        forward = model.encoder.embed if info.task == "classification" else model.encoder.tokens
        return forward, objective, None, lambda x, y: forward(x).detach()
    success = (lambda out, y: out.argmax(1) != y) if info.task == "classification" else None
    return model, objective, success, lambda x, y: y


def _attack(cfg: CellCfg, model: TaskModel, info: TaskInfo, x: torch.Tensor, y: torch.Tensor,
            eps: float, steps: int, seed: int) -> AttackResult:
    forward, objective, success, target_fn = _attack_setup(cfg, model, info)
    with torch.no_grad():
        target = target_fn(x, y)
    a = cfg.attack
    return pgd(forward, objective, x, target, eps=eps, step_size=a.resolved_step_size, steps=steps,
               norm=a.norm, random_start=a.random_start, restarts=a.restarts, seed=seed,
               success_fn=success, stop_when_fooled=a.stop_when_fooled)


class ScoreAccumulator:
    """Accumulates one task's clean or adversarial score over batches, plus per-sample values."""

    def __init__(self, info: TaskInfo) -> None:
        self.info, self.per_sample = info, []
        self.conf = torch.zeros(max(info.num_classes, 1), max(info.num_classes, 1), dtype=torch.long)
        self.depth: dict[str, list[torch.Tensor]] = {"rmse": [], "abs_rel": [], "delta1": []}

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        output, target, info = output.detach().cpu(), target.cpu(), self.info
        if info.task == "classification":
            self.per_sample.extend((output.argmax(1) == target).float().tolist())
        elif info.task == "segmentation":
            pred = output.argmax(1)
            self.conf += confusion_matrix(pred, target, info.num_classes, info.ignore_index)
            labelled = target != info.ignore_index
            self.per_sample.extend(((pred == target) & labelled).flatten(1).sum(1).div(
                labelled.flatten(1).sum(1).clamp_min(1)).tolist())
        else:
            errors = depth_errors(output, target, valid_depth_mask(target, info.min_depth, info.max_depth))
            for k, v in errors.items():
                self.depth[k].append(v)
            self.per_sample.extend(errors["rmse"].tolist())

    def summary(self) -> dict[str, float]:
        if self.info.task == "classification":
            return {"acc": sum(self.per_sample) / max(len(self.per_sample), 1)}
        if self.info.task == "segmentation":
            return {"miou": miou_from_confusion(self.conf),
                    "pixel_acc": float(self.conf.diag().sum() / self.conf.sum().clamp_min(1))}
        return {k: float(torch.cat(v).nanmean()) for k, v in self.depth.items()}


def _save_examples(x: torch.Tensor, x_adv: torch.Tensor, path: Path, n: int = 4) -> None:
    from torchvision.utils import save_image

    delta = (x_adv[:n] - x[:n])
    scale = delta.abs().amax().clamp_min(1e-12)
    save_image(torch.cat([x[:n], x_adv[:n], delta / (2 * scale) + 0.5]), str(path), nrow=min(n, len(x)))


def run_cell(cfg: CellCfg, out_dir: Path | None = None) -> dict[str, float]:
    """Phase 2: clean and attacked scores on the cell's test images, with sanity checks."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    loader = _loader(cfg, "test", input_size(cfg.encoder), cfg.batch_size)  # fails before any work
    fit_loaders = None if cfg.head.checkpoint else _fit_loaders(cfg)
    encoder = create_encoder(cfg.encoder).to(device)
    metrics: dict[str, float] = {}
    if fit_loaders is None:
        head = load_head(cfg, encoder, cfg.head.checkpoint)
    else:
        head, metrics = _fit(cfg, encoder, fit_loaders, device)
    model = TaskModel(encoder, head.to(device)).eval().requires_grad_(False)
    info = _head_info(cfg)
    clean, adv = ScoreAccumulator(info), ScoreAccumulator(info)
    bounds, losses, eps0_gap = [], [], 0.0
    grad_finite, grad_nonzero = True, 1.0
    attack_start = time.perf_counter()
    for i, (x, y) in enumerate(tqdm(loader, desc=f"{cfg.attack.name} eps={cfg.attack.eps:.4f}", leave=False)):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        with torch.no_grad():
            clean_out = model(x)
        clean.add(clean_out, y)
        if i == 0:
            zero = _attack(cfg, model, info, x, y, eps=0.0, steps=1, seed=cfg.seed)
            with torch.no_grad():
                eps0_gap = float((model(zero.x_adv) - clean_out).abs().max())
        result = _attack(cfg, model, info, x, y, eps=cfg.attack.eps, steps=cfg.attack.steps, seed=cfg.seed + i)
        with torch.no_grad():
            adv.add(model(result.x_adv), y)
        bounds.append(checks.perturbation_checks(x, result.x_adv, cfg.attack.eps, cfg.attack.norm))
        losses.extend(result.loss.cpu().tolist())
        grad_finite &= result.grad_finite
        grad_nonzero = min(grad_nonzero, result.grad_nonzero)
        if out_dir is not None and i == 0:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            _save_examples(x.cpu(), result.x_adv.cpu(), Path(out_dir) / "adv_examples.png")
    metrics["time/attack_seconds"] = time.perf_counter() - attack_start
    clean_scores, adv_scores = clean.summary(), adv.summary()
    metrics.update({f"clean/{k}": v for k, v in clean_scores.items()})
    metrics.update({f"adv/{k}": v for k, v in adv_scores.items()})
    metrics["adv/loss"] = sum(losses) / max(len(losses), 1)
    metrics["n_samples"] = float(len(clean.per_sample))
    key, higher = PRIMARY[info.task]
    metrics.update({k: min(b[k] for b in bounds) for k in ("check/delta_in_ball", "check/x_adv_in_box")})
    metrics["attack/max_delta"] = max(b["attack/max_delta"] for b in bounds)
    metrics.update(checks.gradient_checks(grad_finite, grad_nonzero, cfg.attack.eps, cfg.attack.steps))
    metrics.update(checks.score_checks(clean_scores[key], adv_scores[key], higher, eps0_gap))
    metrics["check/all_passed"] = checks.all_passed(metrics)
    if out_dir is not None:
        _write_per_sample(Path(out_dir) / "per_sample.csv", key, clean.per_sample, adv.per_sample, losses)
    metrics["time/cell_seconds"] = time.perf_counter() - start
    return metrics


def _write_per_sample(path: Path, key: str, clean: list[float], adv: list[float], losses: list[float]) -> None:
    name = {"acc": "correct", "miou": "pixel_acc", "rmse": "rmse"}[key]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", f"clean_{name}", f"adv_{name}", "attack_loss"])
        writer.writerows(zip(range(len(clean)), clean, adv, losses))
