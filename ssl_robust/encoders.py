"""timm-backed encoders that take images in [0, 1] and carry their own normalisation.

``resolve_encoder(cfg)`` resolves a short alias (``dinov2_vits14``, see ``aliases.py``) or any
timm name once into a ``ResolvedEncoder``: the timm model, the input contract (size, mean/std) and
the architecture. ``create_encoder`` builds it, loads weights from the hub (``pretrained``) or from a
local checkpoint file (safetensors, a weights-only torch file or a PyTorch Lightning ``.ckpt``, read
as data by ``checkpoints.py``; original DINO/DINOv2/DeACL layouts included), and wraps the model so
that attacks see a pixel-space function with the weights' own mean/std inside. ``convert_checkpoint``
writes a checkpoint's encoder once as plain timm safetensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ssl_robust.aliases import ENCODERS, EncoderSpec
from ssl_robust.checkpoints import (VIT_KEYS, CheckpointError, backbone_tensors, read_checkpoint, save_tensors,
                                    staged_safetensors)
from ssl_robust.registry import UnknownNameError
from ssl_robust.config import EncoderCfg, check_patch_multiple
from ssl_robust.config_file import ConfigError


@dataclass(frozen=True)
class ResolvedEncoder:
    """An encoder config resolved once, before any work: the timm model to build, the input
    contract its weights expect and its architecture (read from timm). A command resolves each
    distinct encoder once and hands the result on; trials receive it with their config."""

    name: str  # as configured: an alias or a timm name
    timm_name: str  # with the pretrained tag where the alias has one
    model_kwargs: dict[str, Any]  # the alias's and the config's, ``img_size`` included
    pretrained: bool  # hub weights are loaded (unless a checkpoint is)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int  # square input, also the data's
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float
    prefix_tokens: int  # CLS and register tokens

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for a trial's config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResolvedEncoder":
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


def resolve_encoder(cfg: EncoderCfg) -> ResolvedEncoder:
    """Resolve an alias or timm name once: the UnknownNameError with near names for neither, the
    input size (config, alias, timm's pretrained tag, else 224), mean/std (config, alias, tag) and
    the architecture, built on the meta device (no memory, no weights); a ConfigError naming
    ``encoder.image_size`` unless the input is a whole number of patches."""
    spec = ENCODERS.get(cfg.name) if cfg.name in ENCODERS else None
    if spec is None and not timm.is_model(cfg.name):
        raise UnknownNameError(ENCODERS.unknown_message(cfg.name, extra=timm.list_models("vit_*"))
                               + "; or any timm ViT name")
    name = spec.timm_name if spec else cfg.name
    tag = None if spec else timm.models.get_pretrained_cfg(cfg.name)
    size = cfg.image_size or (spec.image_size if spec else int(tag.input_size[-1]) if tag else 224)
    kwargs: dict[str, Any] = {**(spec.model_kwargs if spec else {}), **cfg.model_kwargs, "img_size": size}
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:  # an argument the architecture does not take
        raise ConfigError(f"encoder: timm cannot build {cfg.name!r} with {kwargs}: {err}") from err
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        raise ConfigError(f"encoder.name: {cfg.name!r} is not a timm ViT (no patch embedding and blocks)")
    patch = model.patch_embed.patch_size[0]
    try:
        check_patch_multiple(size, patch, cfg.name)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    hub = cfg.pretrained if cfg.pretrained is not None else (spec.pretrained if spec else True)
    mean, std = _input_contract(cfg, spec, tag)
    block = model.blocks[0]
    return ResolvedEncoder(cfg.name, name, kwargs, hub, mean, std, size, patch,
                           model.embed_dim, len(model.blocks), block.attn.num_heads,
                           block.mlp.fc1.out_features / model.embed_dim, model.num_prefix_tokens)


class ResolvedEncoders:
    """The distinct encoder configs of a command, each resolved once (a config's checkpoint and
    layer do not change its resolution); as plain values in trial configs."""

    def __init__(self, cfgs: Iterable[EncoderCfg] = (), found: dict[str, ResolvedEncoder] | None = None) -> None:
        self.found: dict[str, ResolvedEncoder] = dict(found or {})
        for cfg in cfgs:
            self.of(cfg)

    @staticmethod
    def key(cfg: EncoderCfg) -> str:
        """A short hash of what the resolution depends on (a plain key for Tune's flattened configs)."""
        fields = cfg.model_dump(mode="json", exclude={"checkpoint", "checkpoint_key", "layer"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def of(self, cfg: EncoderCfg) -> ResolvedEncoder:
        """The resolution of ``cfg`` (resolved now if no config like it was)."""
        key = self.key(cfg)
        if key not in self.found:
            self.found[key] = resolve_encoder(cfg)
        return self.found[key]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {key: found.as_dict() for key, found in self.found.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> "ResolvedEncoders":
        return cls(found={key: ResolvedEncoder.from_dict(found) for key, found in data.items()})


def _input_contract(cfg: EncoderCfg, spec: EncoderSpec | None, tag: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the weights expect: explicit in the config, else the alias's, else timm's tag."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if spec is not None:
        return spec.mean, spec.std
    if tag is None:
        raise ConfigError(f"encoder.mean/encoder.std: {cfg.name!r} has no pretrained tag to take them "
                          "from; set them explicitly")
    return tuple(tag.mean), tuple(tag.std)


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


def build_model(encoder: ResolvedEncoder, pretrained: bool | None = None) -> nn.Module:
    """The timm model of a resolved encoder, without its checkpoint (hub weights if ``pretrained``,
    None: as resolved)."""
    pretrained = encoder.pretrained if pretrained is None else pretrained
    return timm.create_model(encoder.timm_name, pretrained=pretrained, num_classes=0, **encoder.model_kwargs)


def create_encoder(cfg: EncoderCfg, resolved: ResolvedEncoder | None = None) -> Encoder:
    """Build a frozen, eval-mode encoder from its config (resolved as ``resolved``, else here);
    ``checkpoint`` must be a local file."""
    resolved = resolved or resolve_encoder(cfg)
    model = build_model(resolved, pretrained=False if cfg.checkpoint is not None else None)
    if cfg.checkpoint is not None:
        load_backbone_weights(model, local_file(cfg.checkpoint), cfg.checkpoint_key)
    encoder = Encoder(model, resolved.mean, resolved.std, layer=cfg.layer)
    encoder.eval().requires_grad_(False)
    return encoder


def convert_checkpoint(source: str | Path, out: str | Path, key: str | None = None,
                       encoder: ResolvedEncoder | None = None) -> tuple[str, int]:
    """Write the encoder of a checkpoint (a Lightning ``.ckpt`` too) once as plain timm safetensors;
    with ``encoder`` (resolved) the prefix is found from its keys and the written file is
    loaded into it before it replaces ``out``. Returns (the prefix used, the tensors written)."""
    model = build_model(encoder, pretrained=False) if encoder else None
    reference = model.state_dict() if model is not None else VIT_KEYS
    tensors, prefix = backbone_tensors(read_checkpoint(source), key, reference, str(source))
    with staged_safetensors(Path(out)) as staged:
        save_tensors(tensors, staged)
        if model is not None:
            where = f"checkpoint {source} (keys under {prefix!r}, {out} not written)"
            _load_state(model, read_checkpoint(staged), where)
    return prefix, len(tensors)


def local_file(path: str) -> Path:
    """A checkpoint path as a local file; URIs must be resolved first (``tracking.local_path``)."""
    if "://" in path or path.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
        raise ValueError(f"checkpoint {path!r} is a URI: resolve it to a local file first "
                         "(ssl_robust.tracking.local_path)")
    return Path(path).expanduser()
