"""Numeric precision of attacks and feature extraction: fp32, or bf16/fp16 autocast.

Under autocast the model runs in half precision while its output is cast back to float32, so the
attack's loss, the perturbation delta and its gradient stay float32 (the "master copy").
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ssl_robust.config import Precision

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 on ``device``'s type; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def in_precision(fn: Callable[[torch.Tensor], torch.Tensor], precision: Precision,
                 device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` run under autocast, its output as float32 (fp32: ``fn`` itself)."""
    if precision == "fp32":
        return fn

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            out = fn(x)
        return out.float()
    return run
