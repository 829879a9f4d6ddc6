"""A cell's example figure (``adv_examples.png``): the first test images clean, their perturbation
and attacked, each with what the model made of it, so a reader sees what the attack did.

Classification titles each image with its predicted class (and the label); segmentation and depth
show the label map and the predicted maps beside the images. The perturbation is scaled to fill the
grey range (0.5 = no change) and the scale is in its title.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after choosing the file-only backend)

N_EXAMPLES = 4
PANEL_INCHES = 1.7


@dataclass
class Example:
    """The first images of a cell's first batch: inputs, attacked inputs, both outputs, targets."""

    x: torch.Tensor  # [n, 3, H, W] in [0, 1]
    x_adv: torch.Tensor
    clean_out: torch.Tensor  # logits [n, C], class maps' logits [n, C, h, w] or depth [n, h, w]
    adv_out: torch.Tensor
    target: torch.Tensor  # labels [n], label maps [n, h, w] or depth [n, h, w]

    @classmethod
    def first(cls, x: torch.Tensor, x_adv: torch.Tensor, clean_out: torch.Tensor, adv_out: torch.Tensor,
              target: torch.Tensor, n: int = N_EXAMPLES) -> "Example":
        return cls(*(t[:n].detach().float().cpu() if t.is_floating_point() else t[:n].detach().cpu()
                     for t in (x, x_adv, clean_out, adv_out, target)))


def _image(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).clamp(0, 1).numpy()


def perturbation_scale(example: Example) -> float:
    """The factor that maps the largest |δ| of the shown images to half the grey range."""
    return float(0.5 / (example.x_adv - example.x).abs().amax().clamp_min(1e-12))


def example_figure(example: Example, task: str, ignore_index: int = 255) -> Figure:
    """One row per image. Classification: clean, perturbation, attacked, titled with the predicted
    class (red when the attack changed it). Dense tasks: clean, label map, clean prediction,
    perturbation, attacked, attacked prediction."""
    dense = task != "classification"
    n = len(example.x)
    columns = ["clean", "target", "clean prediction", "perturbation", "attacked", "attacked prediction"] if dense \
        else ["clean", "perturbation", "attacked"]
    fig = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * n + 0.4))
    scale = perturbation_scale(example)
    delta = (example.x_adv - example.x) * scale + 0.5
    maps = _maps(example, task, ignore_index) if dense else None
    for row in range(n):
        panels = {"clean": _image(example.x[row]), "perturbation": _image(delta[row]),
                  "attacked": _image(example.x_adv[row])}
        if maps is not None:
            panels.update({k: v[row] for k, v in maps.items() if k != "style"})
        for col, name in enumerate(columns):
            ax = fig.add_subplot(n, len(columns), row * len(columns) + col + 1)
            kwargs = maps["style"] if maps is not None and name in ("target", "clean prediction",
                                                                    "attacked prediction") else {}
            ax.imshow(panels[name], interpolation="nearest", **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            title, colour = _title(example, task, row, name, scale)
            ax.set_title(title, fontsize=7, color=colour)
    fig.tight_layout()
    return fig


def _maps(example: Example, task: str, ignore_index: int) -> dict:
    """The label map and both predictions as arrays, and their shared colour scale."""
    if task == "segmentation":
        target = example.target.numpy().astype(float)
        target[target == ignore_index] = np.nan
        classes = max(int(example.clean_out.shape[1]), 1)
        return {"target": target, "clean prediction": example.clean_out.argmax(1).numpy(),
                "attacked prediction": example.adv_out.argmax(1).numpy(),
                "style": {"cmap": "tab20", "vmin": 0, "vmax": max(classes - 1, 1)}}
    target = example.target.numpy().astype(float)
    target[target <= 0] = np.nan
    clean, adv = (out.squeeze(1).numpy() if out.dim() == 4 else out.numpy() for out in (example.clean_out,
                                                                                          example.adv_out))
    valid = target[np.isfinite(target)]
    low, high = (float(valid.min()), float(valid.max())) if valid.size else (float(clean.min()), float(clean.max()))
    return {"target": target, "clean prediction": clean, "attacked prediction": adv,
            "style": {"cmap": "viridis", "vmin": low, "vmax": max(high, low + 1e-6)}}


def _title(example: Example, task: str, row: int, name: str, scale: float) -> tuple[str, str]:
    if name == "perturbation":
        return f"δ × {scale:.3g} + 0.5", "black"
    if task != "classification":
        return name, "black"
    label = int(example.target[row])
    clean, adv = int(example.clean_out[row].argmax()), int(example.adv_out[row].argmax())
    if name == "clean":
        return f"label {label} · predicted {clean}", "black"
    return f"predicted {adv}", "#C00000" if adv != clean else "black"


def save_examples(example: Example, task: str, path: Path, ignore_index: int = 255) -> Path:
    """``example_figure`` as a PNG at ``path``."""
    example_figure(example, task, ignore_index).savefig(path, dpi=100)
    return path
