"""timm-backed encoders that take images in [0, 1] and carry their own normalisation.

``create_encoder(cfg)`` resolves a short alias (``dinov2_vits14``, see ``aliases.py``) or any timm
name, loads weights from the hub (``pretrained``) or from a local checkpoint file (safetensors or
``torch.load(weights_only=True)``, original DINO/DINOv2 layouts included), and wraps the model so
that attacks see a pixel-space function with the weights' own mean/std inside.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ssl_robust.aliases import ENCODERS, EncoderSpec
from ssl_robust.registry import UnknownNameError
from ssl_robust.config import ConfigError, EncoderCfg, check_patch_multiple, patch_size_hint


_STATE_DICT_KEYS = ("teacher", "student", "model", "state_dict", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not weights-only, or not this model's."""


def _alias(name: str) -> EncoderSpec | None:
    return ENCODERS.get(name) if name in ENCODERS else None


def timm_name(name: str) -> str:
    """Alias or timm name -> timm name (with pretrained tag where the alias has one)."""
    spec = _alias(name)
    return spec.timm_name if spec else name


def check_encoder_name(name: str) -> None:
    """Raise a ValueError with near-name suggestions for a name that is neither alias nor timm model."""
    if name in ENCODERS or timm.is_model(name):
        return
    raise UnknownNameError(ENCODERS.unknown_message(name, extra=timm.list_models("vit_*"))
                           + "; or any timm ViT name")


def input_size(cfg: EncoderCfg) -> int:
    """The square input size the encoder will be built for, known before building it."""
    if cfg.image_size is not None:
        return cfg.image_size
    spec = _alias(cfg.name)
    if spec is not None:
        return spec.image_size
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.name)
    return int(pretrained_cfg.input_size[-1]) if pretrained_cfg else 224


def input_contract(cfg: EncoderCfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the weights expect: explicit in the config, else the alias's, else timm's tag."""
    if cfg.mean is not None and cfg.std is not None:
        return cfg.mean, cfg.std
    spec = _alias(cfg.name)
    if spec is not None:
        return spec.mean, spec.std
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.name)
    if pretrained_cfg is None:
        raise ValueError(f"encoder.mean/encoder.std: {cfg.name!r} has no pretrained tag to take them "
                         "from; set them explicitly")
    return tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)


class Encoder(nn.Module):
    """Pixel-space wrapper: normalises inside, exposes the CLS embedding and the patch-token grid."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 layer: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.layer = layer
        self.embed_dim: int = model.embed_dim
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.image_size: int = model.patch_embed.img_size[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: (CLS embedding [B, D], patch tokens [B, D, h, w]) of the configured layer
        (the heads' input), both after the final norm."""
        return self.features_at(x, self.layer)

    def features_at(self, x: torch.Tensor, layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS, patch tokens) of block ``layer`` (None = the last), after the final norm."""
        x = self.normalize(x)
        if layer is not None:
            (grid, prefix), = self.model.forward_intermediates(
                x, indices=[layer], norm=True, output_fmt="NCHW", intermediates_only=True,
                return_prefix_tokens=True)
            return prefix[:, 0], grid
        tokens = self.model.forward_features(x)
        cls = self.model.forward_head(tokens, pre_logits=True)
        patches = tokens[:, self.model.num_prefix_tokens:]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return cls, patches.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global embedding [B, D]: CLS token after the final norm."""
        return self.features(x)[0]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-token grid [B, D, h, w]."""
        return self.features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the backbone's tensors in a DINO/DINOv2/timm/Lightning-style checkpoint."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds {type(obj).__name__}, not a state dict")
    for key in _STATE_DICT_KEYS:  # the teacher first: DINO evaluates its teacher
        if isinstance(obj.get(key), dict):
            return _unwrap_state_dict(obj[key])
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``module.backbone.blocks.0...`` -> ``blocks.0...``; keys outside the backbone are dropped."""
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load_reason(err: BaseException) -> str:
    """The cause in torch's or safetensors' message, without torch's advice to drop ``weights_only``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line for line in lines if not any(word in line for word in ("weights_only", "Weights only", "torch.load"))]
    return "; ".join(kept)[:300] or type(err).__name__


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a weights-only torch checkpoint; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):  # DINO saves its args alongside
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a bad file
        raise CheckpointError(
            f"checkpoint {path}: not a safetensors file or a weights-only torch checkpoint "
            f"({_load_reason(err)}); it is not loaded further. Use a .safetensors file, or re-save the "
            "state dict of tensors from a copy you trust") from err
    try:
        return _unwrap_state_dict(state)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from err


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a DINO/DINOv2/timm checkpoint into a timm ViT; classifier/projection heads are dropped."""
    state = _strip_prefixes(read_checkpoint(path))
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "dino_head", "ibot_head"))}
    state = checkpoint_filter_fn(state, model)
    expected = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: shapes differ: {wrong[:4]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: "
                         f"missing {missing[:8]}, unexpected {unexpected[:8]}")


def create_encoder(cfg: EncoderCfg) -> Encoder:
    """Build a frozen, eval-mode encoder from its config; ``checkpoint`` must be a local file."""
    check_encoder_name(cfg.name)
    spec = _alias(cfg.name)
    kwargs: dict[str, Any] = {**(spec.model_kwargs if spec else {}), **cfg.model_kwargs,
                              "img_size": input_size(cfg)}
    _check_patches(cfg, kwargs["img_size"], patch_size_hint(cfg.name, kwargs))
    pretrained = (cfg.pretrained if cfg.pretrained is not None else (spec.pretrained if spec else True))
    model = timm.create_model(timm_name(cfg.name), pretrained=pretrained and cfg.checkpoint is None,
                              num_classes=0, **kwargs)
    _check_patches(cfg, kwargs["img_size"], model.patch_embed.patch_size[0])
    if cfg.checkpoint is not None:
        load_backbone_weights(model, local_file(cfg.checkpoint))
    mean, std = input_contract(cfg)
    encoder = Encoder(model, mean, std, layer=cfg.layer)
    encoder.eval().requires_grad_(False)
    return encoder


def _check_patches(cfg: EncoderCfg, image_size: int, patch: int | None) -> None:
    """ConfigError naming ``encoder.image_size`` unless the input is a whole number of patches."""
    if patch:
        try:
            check_patch_multiple(image_size, patch, cfg.name)
        except ValueError as err:
            raise ConfigError(str(err)) from err


def local_file(path: str) -> Path:
    """A checkpoint path as a local file; URIs must be resolved first (``tracking.local_path``)."""
    if "://" in path or path.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
        raise ValueError(f"checkpoint {path!r} is a URI: resolve it to a local file first "
                         "(ssl_robust.tracking.local_path)")
    return Path(path).expanduser()
