"""The pure parts of DeACL: the loss, the inner EmbedAttack on the student, batch augmentations.

Embeddings travel as ``(cls [B, D], tokens [B, D, h, w])`` tuples, as ``Encoder.features`` returns.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ssl_robust.objectives import embed_cos, embed_l2
from ssl_robust.pgd import ObjectiveFn, pgd

Feats = tuple[torch.Tensor, torch.Tensor]


def cos_cls(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of CLS embeddings, one per sample."""
    return F.cosine_similarity(a, b, dim=1)


def cos_tok(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per patch token, averaged over tokens: one per sample."""
    return F.cosine_similarity(a, b, dim=1).flatten(1).mean(dim=1)


def _neg_cos(a: Feats, b: Feats, dense_weight: float) -> torch.Tensor:
    """-cos(CLS) - dense_weight * cos_tok(tokens), mean over the batch."""
    loss = -cos_cls(a[0], b[0]).mean()
    if dense_weight > 0:
        loss = loss - dense_weight * cos_tok(a[1], b[1]).mean()
    return loss


def deacl_loss(student_clean: Feats, teacher_clean: Feats, student_adv: Feats, gamma: float,
               dense_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """DeACL's loss: ``total = clean + gamma * adv`` with

        clean = -cos(f_R(x), f(x))        - dense_weight * cos_tok(f_R(x), f(x))
        adv   = -cos(f_R(x_adv), f_R(x))  - dense_weight * cos_tok(f_R(x_adv), f_R(x))

    As in the original DeACL code, f_R(x) is not detached in ``adv``: the robustness term pulls
    the clean student embedding towards the adversarial one as well as the reverse. The teacher's
    embeddings are treated as constants.
    """
    teacher_clean = (teacher_clean[0].detach(), teacher_clean[1].detach())
    clean = _neg_cos(student_clean, teacher_clean, dense_weight)
    adv = _neg_cos(student_adv, student_clean, dense_weight)
    return {"total": clean + gamma * adv, "clean": clean, "adv": adv}


def pack(feats: Feats) -> torch.Tensor:
    """(cls [B,D], tokens [B,D,h,w]) -> one tensor [B, D, 1 + h*w] (CLS first), as the PGD
    engine indexes its target per sample and so needs a single tensor."""
    cls, tokens = feats
    return torch.cat([cls[:, :, None], tokens.flatten(2)], dim=2)


def attack_objective(dense_weight: float) -> ObjectiveFn:
    """Inner-attack objective on packed embeddings: embed_cos(CLS) + dense_weight * embed_cos(tokens)."""

    def objective(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
        loss = embed_cos(output[:, :, 0], target[:, :, 0])
        if dense_weight > 0:
            loss = loss + dense_weight * embed_cos(output[:, :, 1:], target[:, :, 1:])
        return loss

    return objective


def embed_attack(features: Callable[[torch.Tensor], Feats], x: torch.Tensor, target: Feats, *,
                 dense_weight: float, eps: float, step_size: float, steps: int, norm: str,
                 random_start: bool, seed: int) -> torch.Tensor:
    """DeACL's inner attack: push the student's embedding of x + delta away (1 - cos) from the
    teacher's clean embedding ``target``; returns x_adv (detached)."""
    result = pgd(lambda z: pack(features(z)).float(), attack_objective(dense_weight), x,
                 pack(target).detach().float(), eps=eps, step_size=step_size, steps=steps, norm=norm,
                 random_start=random_start, seed=seed)
    return result.x_adv.detach()


def probe_attack(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, clean_cls: torch.Tensor, *,
                 eps: float, step_size: float, steps: int, norm: str, random_start: bool,
                 seed: int) -> torch.Tensor:
    """The probe's EmbedAttack: maximise ||f(x + delta) - f(x)||^2 on the CLS embedding."""
    steps = max(steps, 1) if eps > 0 else steps
    result = pgd(embed, embed_l2, x, clean_cls.detach(), eps=eps, step_size=step_size, steps=steps,
                 norm=norm, random_start=random_start, seed=seed)
    return result.x_adv.detach()


def augment(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) and horizontal
    flip per sample, as one affine resampling of the batch back to its own size.

    Unlike torchvision's rejection sampling, a crop wider or taller than the image is clamped to
    the image side. All draws come from ``generator`` (on the CPU), so a seed fixes the batch.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    centre_x = (torch.rand(b, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(b, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


def pad_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """The seed's ``RandomCrop(size, padding) + RandomHorizontalFlip`` per sample: zero-pad every side
    by ``padding``, crop the image's own size at a random offset in [0, 2 * padding], flip with p 1/2.

    All draws come from ``generator`` (on the CPU), so a seed fixes the batch.
    """
    b, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).tolist()
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).tolist()
    flip = (torch.rand(b, generator=generator) < 0.5).tolist()
    crops = [padded[i, :, t:t + height, s:s + width] for i, (t, s) in enumerate(zip(top, left))]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip)])


def seed_padding(size: int) -> int:
    """The seed's RandomCrop padding, ``4 * size // 32`` (28 at 224): an eighth of the side."""
    return 4 * size // 32


def augment_batch(x: torch.Tensor, mode: str, crop_scale: tuple[float, float],
                  generator: torch.Generator) -> torch.Tensor:
    """DeaclCfg.augment on a batch: ``rrc`` (``augment``), ``seed`` (``pad_crop_flip``) or ``none``."""
    if mode == "rrc":
        return augment(x, crop_scale, generator)
    if mode == "seed":
        return pad_crop_flip(x, seed_padding(x.shape[-1]), generator)
    if mode == "none":
        return x
    raise ValueError(f"augment: unknown mode {mode!r}; allowed: 'rrc', 'seed', 'none'")
