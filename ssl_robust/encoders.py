"""timm-backed encoders that take images in [0, 1] and carry their own normalisation.

``create_encoder(cfg)`` resolves a short alias (``dinov2_vits14``, see ``aliases.py``) or any timm
name, loads weights from the hub (``pretrained``) or from a local checkpoint file (safetensors, a
weights-only torch file or a PyTorch Lightning ``.ckpt``, read as data by ``checkpoints.py``;
original DINO/DINOv2/DeACL layouts included), and wraps the model so that attacks see a pixel-space
function with the weights' own mean/std inside. ``convert_checkpoint`` writes a checkpoint's
encoder once as plain timm safetensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ssl_robust.aliases import ENCODERS, EncoderSpec
from ssl_robust.checkpoints import (VIT_KEYS, CheckpointError, backbone_tensors, read_checkpoint, save_tensors,
                                    staged_safetensors)
from ssl_robust.registry import UnknownNameError
from ssl_robust.config import EncoderCfg, check_patch_multiple, patch_size_hint
from ssl_robust.config_file import ConfigError


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


def load_backbone_weights(model: nn.Module, path: str | Path, key: str | None = None) -> str:
    """Load a DINO/DINOv2/DeACL/timm checkpoint into a timm ViT, its tensors under prefix ``key``
    (None: found from the model's key names); heads are dropped. Returns the prefix used."""
    state, prefix = backbone_tensors(read_checkpoint(path), key, model.state_dict(), str(path))
    _load_state(model, state, f"checkpoint {path} (keys under {prefix!r})")
    return prefix


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load timm-named tensors into the model; CheckpointError naming ``source`` unless they fit
    exactly (a classifier head aside)."""
    state = checkpoint_filter_fn(state, model)
    where = f"{source} does not fit {type(model).__name__}"
    expected = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{where}: shapes differ: {wrong[:4]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise CheckpointError(f"{where}: missing {missing[:8]}, unexpected {unexpected[:8]}")


def build_model(cfg: EncoderCfg, pretrained: bool | None = None) -> nn.Module:
    """The timm model of an encoder config, without its checkpoint (hub weights if ``pretrained``,
    None: the config's or alias's default)."""
    check_encoder_name(cfg.name)
    spec = _alias(cfg.name)
    kwargs: dict[str, Any] = {**(spec.model_kwargs if spec else {}), **cfg.model_kwargs,
                              "img_size": input_size(cfg)}
    _check_patches(cfg, kwargs["img_size"], patch_size_hint(cfg.name, kwargs))
    if pretrained is None:
        pretrained = cfg.pretrained if cfg.pretrained is not None else (spec.pretrained if spec else True)
    model = timm.create_model(timm_name(cfg.name), pretrained=pretrained, num_classes=0, **kwargs)
    _check_patches(cfg, kwargs["img_size"], model.patch_embed.patch_size[0])
    return model


def create_encoder(cfg: EncoderCfg) -> Encoder:
    """Build a frozen, eval-mode encoder from its config; ``checkpoint`` must be a local file."""
    model = build_model(cfg, pretrained=False if cfg.checkpoint is not None else None)
    if cfg.checkpoint is not None:
        load_backbone_weights(model, local_file(cfg.checkpoint), cfg.checkpoint_key)
    mean, std = input_contract(cfg)
    encoder = Encoder(model, mean, std, layer=cfg.layer)
    encoder.eval().requires_grad_(False)
    return encoder


def convert_checkpoint(source: str | Path, out: str | Path, key: str | None = None,
                       encoder: str | None = None) -> tuple[str, int]:
    """Write the encoder of a checkpoint (a Lightning ``.ckpt`` too) once as plain timm safetensors;
    with ``encoder`` (alias or timm name) the prefix is found from its keys and the written file is
    loaded into it before it replaces ``out``. Returns (the prefix used, the tensors written)."""
    model = build_model(EncoderCfg(name=encoder), pretrained=False) if encoder else None
    reference = model.state_dict() if model is not None else VIT_KEYS
    tensors, prefix = backbone_tensors(read_checkpoint(source), key, reference, str(source))
    with staged_safetensors(Path(out)) as staged:
        save_tensors(tensors, staged)
        if model is not None:
            where = f"checkpoint {source} (keys under {prefix!r}, {out} not written)"
            _load_state(model, read_checkpoint(staged), where)
    return prefix, len(tensors)


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
