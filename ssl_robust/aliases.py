"""Encoder aliases: short names -> timm architecture and the input contract the weights expect.

Light on purpose (no torch, no timm): configs check names here; ``encoders.create_encoder`` builds
from the same entries. Any other timm ViT name is accepted and checked against timm when built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssl_robust.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """A named encoder: timm id (with pretrained tag), mean/std of its weights, default input size."""

    timm_name: str
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained: bool = True  # hub weights exist; False for random-init test models
    model_kwargs: dict[str, Any] = field(default_factory=dict)


ENCODERS: Registry[EncoderSpec] = Registry("encoder")
ENCODERS.register("dino_vits16")(EncoderSpec("vit_small_patch16_224.dino", 224))
ENCODERS.register("dino_vits8")(EncoderSpec("vit_small_patch8_224.dino", 224))
ENCODERS.register("dino_vitb16")(EncoderSpec("vit_base_patch16_224.dino", 224))
ENCODERS.register("dino_vitb8")(EncoderSpec("vit_base_patch8_224.dino", 224))
ENCODERS.register("dinov2_vits14")(EncoderSpec("vit_small_patch14_dinov2.lvd142m", 518))
ENCODERS.register("dinov2_vitb14")(EncoderSpec("vit_base_patch14_dinov2.lvd142m", 518))
ENCODERS.register("dinov2_vitl14")(EncoderSpec("vit_large_patch14_dinov2.lvd142m", 518))
# Random-init test models, seconds on a CPU: the shapes of DINOv2 ViT-S/14 (28 px, a 2x2 patch
# grid; LayerScale 1 so random blocks are not identities) and of DINO ViT-B/16 (32 px).
ENCODERS.register("tiny_dinov2")(EncoderSpec(
    "vit_small_patch14_dinov2", 28, pretrained=False,
    model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2, "init_values": 1.0}))
ENCODERS.register("tiny_dino")(EncoderSpec(
    "vit_base_patch16_224", 32, pretrained=False, model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2}))


def is_tagged(timm_name: str) -> bool:
    """A timm name with a pretrained tag (``vit_base_patch16_224.dino``) carries its own mean/std."""
    return "." in timm_name
