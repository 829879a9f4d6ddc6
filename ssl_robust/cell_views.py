"""What a cell's batch is scored through and what EmbedAttack pushes: the whole image, its sliding
windows, or the native-size image in one pass, in the cell's precision (and compiled under
``compile``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ssl_robust.compiled import compiled
from ssl_robust.config import CellCfg
from ssl_robust.data.load import slide_stride
from ssl_robust.encoders import Encoder
from ssl_robust.heads import TaskModel
from ssl_robust.precision import in_precision
from ssl_robust.sliding import log_probs, pad_to_multiple, resize_to, slide, slide_tokens, whole
from ssl_robust.tasks import TaskSpec, eval_mode


@dataclass
class Views:
    """What a batch is scored through (the task output at the labels' size) and what EmbedAttack
    pushes (the representation the head reads) — whole images, or sliding windows under ``slide``."""

    scored: Callable[[torch.Tensor], torch.Tensor]
    representation: Callable[[torch.Tensor], torch.Tensor]


def views(cfg: CellCfg, model: TaskModel, task: TaskSpec, out_size: tuple[int, int]) -> Views:
    """Under ``slide`` every S x S window runs through the model (gradients reach every pixel), the
    averaged output (``data.slide_average``) is upsampled to the labels' native ``out_size``;
    EmbedAttack pushes the token grids of all windows. Under ``whole`` the native-size image runs in
    one pass (``whole_views``). The representation is block ``attack.layer``'s (None = the last).
    Under ``compile`` both run under torch.compile, built once per model (``compiled``)."""
    part = 0 if task.embedding == "cls" else 1
    device = next(model.parameters()).device

    def represent(x: torch.Tensor) -> torch.Tensor:
        return model.encoder.features_at(x, cfg.attack.layer)[part]

    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if cfg.compile:
        forward = compiled(model, "scored", model, device)
        represent = compiled(model, ("represent", cfg.attack.layer, part), represent, device)
    scored = in_precision(forward, cfg.precision, device)
    represent = in_precision(represent, cfg.precision, device)
    mode = eval_mode(cfg.data)
    if mode == "resize":
        return Views(scored, represent)
    if mode == "whole":
        return whole_views(model.encoder, scored, represent, out_size)
    crop = model.encoder.image_size  # the encoder's own input contract, not recomputed per batch
    stride = slide_stride(cfg.data, crop)
    if cfg.data.slide_average == "probs":
        return Views(lambda x: log_probs(resize_to(slide(scored, x, crop, stride, average="probs"), out_size)),
                     lambda x: slide_tokens(represent, x, crop, stride))
    return Views(lambda x: resize_to(slide(scored, x, crop, stride), out_size),
                 lambda x: slide_tokens(represent, x, crop, stride))


def whole_views(encoder: Encoder, scored: Callable[[torch.Tensor], torch.Tensor],
                represent: Callable[[torch.Tensor], torch.Tensor], out_size: tuple[int, int]) -> Views:
    """The whole image in one pass, padded around to a multiple of the patch size with the
    encoder's mean colour and the output cropped back; EmbedAttack pushes the padded image's token
    grid. Needs an encoder that takes any input size (timm's ``dynamic_img_size``)."""
    if not getattr(encoder.model, "dynamic_img_size", False):
        raise ValueError("data.eval='whole' runs the encoder at each image's native size: build it with "
                         "encoder.model_kwargs: {dynamic_img_size: true} (timm interpolates the position "
                         "embeddings; inputs of the built size are unchanged)")
    patch, mean = encoder.patch_size, encoder.mean
    return Views(lambda x: resize_to(whole(scored, x, patch, mean), out_size),
                 lambda x: represent(pad_to_multiple(x, patch, mean)[0]))
