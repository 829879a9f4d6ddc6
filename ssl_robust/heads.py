"""Linear heads on a frozen encoder, and ``fit_head`` that trains them with validation selection.

Every head reads the encoder's ``features(x) -> (cls [B,D], tokens [B,D,h,w])`` and is small
enough that features can be cached once and reused for every epoch (``extract_features``); with
augmented training images they are computed afresh every epoch (``AugmentedFeatures``).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ssl_robust.augment import augment_pairs
from ssl_robust.features import Features, Storage
from ssl_robust.memory import AdaptiveBatch
from ssl_robust.precision import Precision, autocast

HeadOptimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["cosine", "poly", "constant"]
WARMUP_RATIO = 1e-6  # mmseg's linear warm-up starts at this fraction of the learning rate
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (cls, tokens, target)


def pooled(tokens: torch.Tensor) -> torch.Tensor:
    """The mean patch token [B, D] of a grid [B, D, h, w] (a cached mean passes through)."""
    return tokens.mean(dim=(2, 3)) if tokens.dim() == 4 else tokens


class LinearClassifier(nn.Module):
    """Linear layer on the CLS embedding, or on CLS ⊕ mean patch token (DINOv2's linear protocol)."""

    def __init__(self, embed_dim: int, num_classes: int, inputs: str = "cls") -> None:
        super().__init__()
        self.inputs = inputs
        self.linear = nn.Linear(embed_dim * (2 if inputs == "cls_patch_mean" else 1), num_classes)

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return self.linear(torch.cat([cls, pooled(tokens)], dim=1) if self.inputs == "cls_patch_mean" else cls)


class LinearSegmenter(nn.Module):
    """BatchNorm + 1x1 conv on the patch grid, bilinearly upsampled to the label size."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(embed_dim)
        self.conv = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.conv(self.norm(tokens))
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


class LinearDepthHead(nn.Module):
    """DINOv2-style linear depth: patch tokens + CLS -> bin logits -> expected depth over bins.

    Bins are uniform over [min_depth, max_depth]; a softmax over bin logits gives smooth gradients
    everywhere (a ReLU there leaves flat regions that mask attacks). The expectation is taken per
    patch and the depth map upsampled bilinearly, which keeps the head cheap at full resolution.
    """

    def __init__(self, embed_dim: int, n_bins: int, min_depth: float, max_depth: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(2 * embed_dim)
        self.conv = nn.Conv2d(2 * embed_dim, n_bins, kernel_size=1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, n_bins).view(1, -1, 1, 1))

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        cls_map = cls[:, :, None, None].expand_as(tokens)
        logits = self.conv(self.norm(torch.cat([tokens, cls_map], dim=1)))
        depth = (logits.softmax(dim=1) * self.centres).sum(dim=1, keepdim=True)  # [B, 1, h, w] metres
        return F.interpolate(depth, size=out_size, mode="bilinear", align_corners=False)[:, 0]


class DINOv2DepthHead(nn.Module):
    """DINOv2's linear depth head: patch tokens ⊕ CLS upsampled x4, BatchNorm + 1x1 conv to bins
    uniform over [min_depth, max_depth], ReLU + 0.1 normalised to weights ("linear" strategy),
    expected depth upsampled to the output size."""

    def __init__(self, embed_dim: int, n_bins: int, min_depth: float, max_depth: float, upsample: int = 4) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm = nn.BatchNorm2d(2 * embed_dim)
        self.conv = nn.Conv2d(2 * embed_dim, n_bins, kernel_size=1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, n_bins).view(1, -1, 1, 1))

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        features = torch.cat([tokens, cls[:, :, None, None].expand_as(tokens)], dim=1)
        features = F.interpolate(features, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        weights = F.relu(self.conv(self.norm(features))) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        depth = (weights * self.centres).sum(dim=1, keepdim=True)
        return F.interpolate(depth, size=out_size, mode="bilinear", align_corners=False)[:, 0]


class TaskModel(nn.Module):
    """encoder + head as one pixel-space function x in [0,1] -> task output."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, tokens = self.encoder.features(x)
        return self.head(cls, tokens, tuple(x.shape[-2:]))


TokenKeep = Literal["grid", "mean", "none"]


def _keep(patches: torch.Tensor, keep: TokenKeep) -> torch.Tensor:
    if keep == "grid":
        return patches
    return pooled(patches) if keep == "mean" else patches.new_zeros(patches.shape[0], 0)


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: DataLoader, device: torch.device, desc: str = "features",
                     tokens: TokenKeep = "grid", storage: Storage = "disk",
                     precision: Precision = "fp32") -> Features:
    """Run the frozen encoder once over a loader into a float16 feature cache (``storage``: disk or
    memory). ``tokens`` says what is kept of the patch tokens beside CLS: the ``grid`` (dense heads),
    their ``mean`` (a classifier on CLS ⊕ mean token: 2·D numbers per image instead of (1 + h·w)·D)
    or ``none`` (a classifier on CLS only: D numbers)."""
    features = Features(len(loader.dataset), storage)
    batch = AdaptiveBatch(None, device, lambda: "one image's features")
    try:
        for images, targets in tqdm(loader, desc=desc, leave=False):
            cls, patches = encoder_features(encoder, images.to(device), tokens, precision, batch)
            features.append(cls, patches, torch.as_tensor(targets))
    except BaseException:
        features.close()
        raise
    return features


def encoder_features(encoder: nn.Module, x: torch.Tensor, tokens: TokenKeep, precision: Precision,
                     batch: AdaptiveBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoder's CLS and kept patch tokens of ``x``, in slices that fit in memory."""
    def run(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), autocast(precision, x.device):
            cls, patches = encoder.features(rows)
        return cls, _keep(patches, tokens)

    parts = batch.map(run, x)
    if len(parts) == 1:  # the batch fitted: no copy
        return parts[0]
    return torch.cat([c for c, _ in parts]), torch.cat([p for _, p in parts])


def _as_list(batch: list[Any]) -> list[Any]:
    """Collate nothing: items of different sizes reach ``augment_pairs`` as they are."""
    return batch


class AugmentedFeatures:
    """Head inputs computed every pass: the train images in a shuffled order, each batch augmented
    (``augment_pairs``) and run through the frozen encoder. Read like cached ``Features``; the
    order and every augmentation draw come from the ``generator`` given to ``batches``."""

    def __init__(self, encoder: nn.Module, dataset: Dataset, device: torch.device, *, augment: str, size: int,
                 tokens: TokenKeep = "grid", precision: Precision = "fp32",
                 loader_kwargs: dict[str, Any] | None = None) -> None:
        self.encoder, self.dataset, self.device = encoder, dataset, device
        self.augment, self.size, self.tokens, self.precision = augment, size, tokens, precision
        self.loader_kwargs = loader_kwargs or {}
        self.data_seconds = 0.0
        self.memory = AdaptiveBatch(None, device, lambda: "one image's features")

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=order, collate_fn=_as_list,
                            **self.loader_kwargs)
        items = iter(tqdm(loader, desc="augmented features", leave=False))
        while True:
            start = time.perf_counter()
            batch = next(items, None)
            self.data_seconds += time.perf_counter() - start
            if batch is None:
                return
            images, targets = zip(*batch)
            x, target = augment_pairs(images, targets, self.augment, self.size, generator)
            cls, patches = encoder_features(self.encoder, x.to(self.device), self.tokens, self.precision, self.memory)
            yield cls.float(), patches.float(), target

    def nbytes(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing is stored."""

    def __enter__(self) -> "AugmentedFeatures":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TrainInputs(Protocol):
    """What ``fit_head`` trains on: cached ``Features`` or ``AugmentedFeatures``."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]: ...


@torch.no_grad()
def _predictions(head: nn.Module, features: Features, batch_size: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    head.eval()
    for cls, tokens, target in features.batches(batch_size):
        yield head(cls.to(device), tokens.to(device), tuple(target.shape[-2:])), target.to(device)


def make_optimizer(name: HeadOptimizer, params: Iterable[nn.Parameter], lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """``head.optimizer``: AdamW (decoupled weight decay), Adam (L2 weight decay in the gradient) or
    SGD with momentum 0.9."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"head.optimizer: unknown {name!r}; allowed: 'adamw', 'adam', 'sgd'")


def lr_factor(schedule: Schedule, step: int, steps: int, warmup_steps: int = 0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``steps``, as a fraction of ``lr``:
    ``cosine`` annealing to 0, ``poly`` (1 - step/steps), ``constant`` 1; during the first
    ``warmup_steps`` scaled by a linear ramp from 1e-6 to 1 (mmseg's linear warm-up)."""
    progress = min(step / max(steps, 1), 1.0)
    if schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "poly":
        factor = 1 - progress
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"head.schedule: unknown {schedule!r}; allowed: 'cosine', 'poly', 'constant'")
    if step < warmup_steps:
        factor *= 1 - (1 - step / warmup_steps) * (1 - WARMUP_RATIO)
    return factor


def fit_head(head: nn.Module, train: TrainInputs, val: Features, *,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             val_score: Callable[[Iterable[tuple[torch.Tensor, torch.Tensor]]], float],
             epochs: int, lr: float, weight_decay: float, batch_size: int, seed: int,
             device: torch.device, optimizer: HeadOptimizer = "adamw", schedule: Schedule = "cosine",
             warmup_steps: int = 0) -> tuple[nn.Module, dict[str, float]]:
    """Train on the train inputs; keep the epoch that scores best (``val_score`` of the
    (output, target) batches of the validation split, higher is better). The learning rate follows
    ``lr_factor`` step by step."""
    torch.manual_seed(seed)
    head.to(device)
    opt = make_optimizer(optimizer, head.parameters(), lr, weight_decay)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(schedule, step, steps, warmup_steps))
    generator = torch.Generator().manual_seed(seed)
    best_state, best_score, best_epoch = None, -float("inf"), 0
    for epoch in tqdm(range(1, epochs + 1), desc="fit head", leave=False):
        head.train()
        for cls, tokens, target in train.batches(batch_size, shuffle=True, generator=generator):
            target = target.to(device)
            out = head(cls.to(device), tokens.to(device), tuple(target.shape[-2:]))
            loss = loss_fn(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
        score = val_score(_predictions(head, val, batch_size, device))
        if score > best_score:
            best_state, best_score, best_epoch = copy.deepcopy(head.state_dict()), score, epoch
    head.load_state_dict(best_state)
    head.eval()
    return head, {"head/val_score": best_score, "head/best_epoch": float(best_epoch),
                  "head/train_loss": float(loss.detach())}
