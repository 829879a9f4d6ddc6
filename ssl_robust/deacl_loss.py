"""The pure parts of DeACL: the loss, the inner EmbedAttack on the student, batch augmentations.

Embeddings travel as ``(cls [B, D], tokens [B, D, h, w])`` tuples, as ``Encoder.features`` returns.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ssl_robust.augment import pad_crop_flip, random_resized_crop_flip, seed_padding
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


def augment_batch(x: torch.Tensor, mode: str, crop_scale: tuple[float, float],
                  generator: torch.Generator) -> torch.Tensor:
    """DeaclCfg.augment on a batch: ``rrc`` (``random_resized_crop_flip``), ``seed`` (``pad_crop_flip``) or ``none``."""
    if mode == "rrc":
        return random_resized_crop_flip(x, crop_scale, generator)
    if mode == "seed":
        return pad_crop_flip(x, seed_padding(x.shape[-1]), generator)
    if mode == "none":
        return x
    raise ValueError(f"augment: unknown mode {mode!r}; allowed: 'rrc', 'seed', 'none'")
