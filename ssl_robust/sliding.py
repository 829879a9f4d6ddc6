"""Sliding-window inference for dense tasks on images larger than the encoder's square input.

The protocol of mmseg's ``slide`` mode (also DINOv2's linear segmentation/depth evaluation): the
image (short side resized to the encoder size S) is cut into S x S windows with a stride of about
2/3 S, the last window of each row and column flush with the image's edge; a dense function runs
on every window and overlapping outputs are averaged. The result is then upsampled to the
label's native resolution (``resize_to``) and scored there.

Everything here is plain differentiable torch: gradients of the output reach every pixel of the
input through every window that covers it, so attacks perturb the whole image.

A side shorter than the window is zero-padded at the bottom/right up to the window size (the
encoder needs exactly S x S) and the output cropped back, so padded pixels never reach the result.
With short-side sizing to S this never happens (both sides are >= S).

Overlaps average the windows' raw outputs (``average="logits"``: mmseg's and DINOv2's choice, and
the only one for depth) or their softmax probabilities (``"probs"``: the poster's seed code);
``log_probs`` turns averaged probabilities back into scores that argmax and cross-entropy read.

``whole`` is the alternative to windows: the image at any size in one pass, padded on all sides to
a multiple of the patch size with the encoder's mean colour (zero after normalisation: DINOv2's
centre padding) and the output cropped back to the image.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

DenseFn = Callable[[torch.Tensor], torch.Tensor]
Average = Literal["logits", "probs"]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window starts covering [0, length) with windows of ``crop``: 0, stride, 2*stride, ... and a
    last one flush with the end (``length - crop``). A single 0 when ``length <= crop``."""
    if crop < 1 or stride < 1:
        raise ValueError(f"crop and stride must be >= 1, got crop={crop}, stride={stride}")
    if stride > crop:
        raise ValueError(f"stride {stride} > window {crop}: pixels between windows would never be scored")
    if length <= crop:
        return [0]
    return list(range(0, length - crop, stride)) + [length - crop]


def _windows(x: torch.Tensor, crop: int, stride: int) -> tuple[torch.Tensor, list[tuple[int, int]], int, int]:
    """Windows of x [B,C,H,W] as [B*n, C, crop, crop] (image-major, then row-major over starts),
    their (top, left) starts, and the padded (H, W)."""
    if x.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    starts = [(top, left) for top in window_starts(x.shape[-2], crop, stride)
              for left in window_starts(x.shape[-1], crop, stride)]
    windows = torch.stack([x[:, :, t:t + crop, s:s + crop] for t, s in starts], dim=1)
    return windows.flatten(0, 1), starts, x.shape[-2], x.shape[-1]


def _run(fn: DenseFn, windows: torch.Tensor, max_windows: int | None) -> torch.Tensor:
    if max_windows is None or len(windows) <= max_windows:
        return fn(windows)
    return torch.cat([fn(chunk) for chunk in windows.split(max_windows)])


def _checked(out: torch.Tensor, crop: int, n: int, average: Average) -> torch.Tensor:
    """The windows' outputs as [N,C,crop,crop] (depth [N,crop,crop] gains C = 1), softmaxed over C
    under ``average="probs"``."""
    if average not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
    if average == "probs" and out.ndim != 4:
        raise ValueError(f"average='probs' needs class scores [N,C,{crop},{crop}], got {tuple(out.shape)}")
    out = out[:, None] if out.ndim == 3 else out
    if out.ndim != 4 or tuple(out.shape[-2:]) != (crop, crop) or out.shape[0] != n:
        raise ValueError(f"fn must map [N,3,{crop},{crop}] to [N,C,{crop},{crop}] or [N,{crop},{crop}], "
                         f"got {tuple(out.shape)} for N={n}")
    return out.softmax(dim=1) if average == "probs" else out


def slide(fn: DenseFn, x: torch.Tensor, crop: int, stride: int,
          max_windows: int | None = None, average: Average = "logits") -> torch.Tensor:
    """Dense output of ``fn`` over x [B,3,H,W] by sliding ``crop`` x ``crop`` windows.

    ``fn`` maps windows [N,3,crop,crop] to [N,C,crop,crop] (e.g. logits) or [N,crop,crop] (depth);
    the result is [B,C,H,W] or [B,H,W] accordingly: each pixel the mean of the outputs of the
    windows that cover it, or (``average="probs"``, class scores only) the mean of their softmax
    probabilities. All windows of all images go through ``fn`` in one call, or in chunks of at most
    ``max_windows``. Differentiable with respect to x.
    """
    batch, (height, width) = x.shape[0], x.shape[-2:]
    windows, starts, padded_h, padded_w = _windows(x, crop, stride)
    raw = _run(fn, windows, max_windows)
    squeeze = raw.ndim == 3
    out = _checked(raw, crop, len(windows), average).unflatten(0, (batch, len(starts)))
    total = out.new_zeros(batch, out.shape[2], padded_h, padded_w)
    count = torch.zeros(padded_h, padded_w, dtype=out.dtype, device=out.device)
    for k, (top, left) in enumerate(starts):
        total[:, :, top:top + crop, left:left + crop] += out[:, k]
        count[top:top + crop, left:left + crop] += 1
    result = (total / count)[:, :, :height, :width]
    return result[:, 0] if squeeze else result


def log_probs(probs: torch.Tensor) -> torch.Tensor:
    """log of averaged probabilities [B,C,H,W] (floored at the dtype's tiny): scores whose argmax is
    the probabilities' and whose cross-entropy is the negative log of the averaged probability."""
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def pad_to_multiple(x: torch.Tensor, multiple: int, fill: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, int, int]:
    """x [B,C,H,W] padded on all sides (the odd pixel at the bottom/right) to multiples of
    ``multiple``, the padding ``fill`` ([1,C,1,1], e.g. the encoder's mean; None = 0); and the
    (top, left) offset of x inside. Differentiable with respect to x; x itself is copied exactly."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if not (pad_h or pad_w):
        return x, 0, 0
    top, left = pad_h // 2, pad_w // 2
    pads = (left, pad_w - left, top, pad_h - top)
    padded = F.pad(x, pads)
    if fill is not None:
        outside = 1 - F.pad(torch.ones_like(x[:1, :1]), pads)
        padded = padded + fill.to(x) * outside
    return padded, top, left


def whole(fn: DenseFn, x: torch.Tensor, multiple: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """``fn`` on the whole of x [B,3,H,W] in one pass, padded by ``pad_to_multiple``; its output
    [B,C,H',W'] or [B,H',W'] at the padded size, cropped back to [..., H, W]."""
    height, width = x.shape[-2:]
    padded, top, left = pad_to_multiple(x, multiple, fill)
    out = fn(padded)
    if tuple(out.shape[-2:]) != tuple(padded.shape[-2:]):
        raise ValueError(f"fn must keep the input's size {tuple(padded.shape[-2:])}, got {tuple(out.shape)}")
    return out[..., top:top + height, left:left + width]


def slide_tokens(tokens_fn: DenseFn, x: torch.Tensor, crop: int, stride: int,
                 max_windows: int | None = None) -> torch.Tensor:
    """The token grids of every window of x [B,3,H,W], side by side: [B, D, h, n_windows * w].

    ``tokens_fn`` maps windows [N,3,crop,crop] to token grids [N,D,h,w] (e.g.
    ``encoder.tokens``). Windows are in the order of ``slide`` (row-major over the window starts),
    so the same image always gives the same layout: a representation-space target for EmbedAttack.
    """
    batch = x.shape[0]
    windows, starts, _, _ = _windows(x, crop, stride)
    tokens = _run(tokens_fn, windows, max_windows)
    if tokens.ndim != 4 or tokens.shape[0] != len(windows):
        raise ValueError(f"tokens_fn must map [N,3,{crop},{crop}] to [N,D,h,w], got {tuple(tokens.shape)}")
    tokens = tokens.unflatten(0, (batch, len(starts)))  # [B, n, D, h, w]
    return tokens.permute(0, 2, 3, 1, 4).flatten(3, 4)  # [B, D, h, n * w]


def n_windows(height: int, width: int, crop: int, stride: int) -> int:
    """How many windows ``slide`` runs on an image of ``height`` x ``width``."""
    return len(window_starts(max(height, crop), crop, stride)) * len(window_starts(max(width, crop), crop, stride))


def resize_to(output: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of logits [B,C,h,w] or depth [B,h,w] to ``size``
    (the label's native (H, W)); the rank is kept and an output already at ``size`` is returned."""
    size = (int(size[-2]), int(size[-1]))
    if tuple(output.shape[-2:]) == size:
        return output
    if output.ndim == 3:
        return F.interpolate(output[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if output.ndim == 4:
        return F.interpolate(output, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"expected [B,C,h,w] or [B,h,w], got shape {tuple(output.shape)}")
