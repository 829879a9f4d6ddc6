"""Encoders: pixel-space wrapper around timm ViTs, and checkpoint loading in the original layouts."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file

from ssl_robust.config import EncoderCfg
from ssl_robust.aliases import ENCODERS
from ssl_robust.encoders import check_encoder_name, create_encoder, timm_name

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY_DINO_KWARGS = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # DINO v1 ViTs have no LayerScale


def make_encoder(cfg: dict[str, Any], seed: int = 0, **changes: Any):
    torch.manual_seed(seed)
    return create_encoder(EncoderCfg(**{**cfg, **changes}))


def pixels(n: int = 3, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dino_cfg() -> dict[str, Any]:
    """A tiny DINO v1-shaped ViT (patch 16, 32-pixel inputs: a 2x2 grid)."""
    return {"name": "dino_vits16", "pretrained": False, "image_size": 32, "model_kwargs": TINY_DINO_KWARGS}


def assert_same_encoder_outputs(a, b, size: int) -> None:
    x = pixels(size=size)
    with torch.no_grad():
        cls_a, tok_a = a.features(x)
        cls_b, tok_b = b.features(x)
    torch.testing.assert_close(cls_a, cls_b, rtol=0, atol=0)
    torch.testing.assert_close(tok_a, tok_b, rtol=0, atol=0)


def assert_different_encoder_outputs(a, b, size: int) -> None:
    x = pixels(size=size)
    with torch.no_grad():
        assert not torch.allclose(a.embed(x), b.embed(x))


# ----------------------------------------------------------------------------- the wrapper


def test_embed_tokens_and_features_have_documented_shapes(tiny_encoder) -> None:
    x = pixels(3)
    with torch.no_grad():
        cls, grid = tiny_encoder.features(x)
        assert tiny_encoder.embed(x).shape == (3, 48)
        assert tiny_encoder.tokens(x).shape == (3, 48, 2, 2)
        assert tiny_encoder(x).shape == (3, 48)
    assert cls.shape == (3, 48) and grid.shape == (3, 48, 2, 2)
    assert (tiny_encoder.embed_dim, tiny_encoder.patch_size, tiny_encoder.image_size) == (48, 14, 28)


def test_encoder_is_frozen_and_in_eval_mode(tiny_encoder) -> None:
    assert not tiny_encoder.training
    assert not any(p.requires_grad for p in tiny_encoder.parameters())


def test_normalisation_happens_inside_the_wrapper(tiny_encoder) -> None:
    x = pixels(3)
    model = tiny_encoder.model
    with torch.no_grad():
        tokens = model.forward_features((x - IMAGENET_MEAN) / IMAGENET_STD)
        cls = model.forward_head(tokens, pre_logits=True)
        grid = tokens[:, model.num_prefix_tokens:].transpose(1, 2).reshape(3, 48, 2, 2)
        torch.testing.assert_close(tiny_encoder.embed(x), cls)
        torch.testing.assert_close(tiny_encoder.tokens(x), grid)


def test_tokens_are_laid_out_row_major_on_the_patch_grid(tiny_encoder) -> None:
    """grid[:, :, i, j] is the token of patch i * w + j."""
    x = pixels(1)
    model = tiny_encoder.model
    with torch.no_grad():
        tokens = model.forward_features(tiny_encoder.normalize(x))[:, model.num_prefix_tokens:]
        grid = tiny_encoder.tokens(x)
    for index in range(4):
        torch.testing.assert_close(grid[0, :, index // 2, index % 2], tokens[0, index])


def test_intermediate_layer_returns_a_different_grid_of_the_same_shape(tiny_encoder_cfg) -> None:
    last = make_encoder(tiny_encoder_cfg)
    first = make_encoder(tiny_encoder_cfg, layer=0)
    x = pixels(2)
    with torch.no_grad():
        grid_last, grid_first = last.tokens(x), first.tokens(x)
        cls_last, cls_first = last.embed(x), first.embed(x)
    assert grid_first.shape == grid_last.shape == (2, 48, 2, 2)
    assert cls_first.shape == cls_last.shape == (2, 48)
    assert not torch.allclose(grid_first, grid_last)


def test_last_layer_index_equals_the_default_output(tiny_encoder_cfg) -> None:
    default = make_encoder(tiny_encoder_cfg)
    last_block = make_encoder(tiny_encoder_cfg, layer=1)
    x = pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(last_block.tokens(x), default.tokens(x))
        torch.testing.assert_close(last_block.embed(x), default.embed(x))


@pytest.mark.parametrize("output", ["embed", "tokens", "layer0_tokens"])
def test_gradients_flow_to_the_input(tiny_encoder_cfg, output: str) -> None:
    encoder = make_encoder(tiny_encoder_cfg, layer=0 if output.startswith("layer0") else None)
    x = pixels(2).requires_grad_(True)
    out = encoder.embed(x) if output == "embed" else encoder.tokens(x)
    assert out.requires_grad, "the encoder must not force no-grad mode"
    out.pow(2).sum().backward()
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all())
    assert bool((x.grad.flatten(1).abs().sum(1) > 0).all())
    assert all(p.grad is None for p in encoder.parameters())


def test_aliases_resolve_to_timm_models() -> None:
    for alias in ENCODERS.names():
        assert timm.is_model(timm_name(alias)), alias
    assert timm_name("vit_small_patch16_224") == "vit_small_patch16_224"


def test_mean_and_std_come_from_the_alias_unless_given(tiny_encoder_cfg) -> None:
    default = create_encoder(EncoderCfg(**tiny_encoder_cfg))
    assert default.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    explicit = create_encoder(EncoderCfg(**tiny_encoder_cfg, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert explicit.std.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_a_checkpoint_on_an_untagged_timm_name_needs_mean_and_std() -> None:
    with pytest.raises(ValueError, match="encoder.mean"):
        EncoderCfg(name="vit_base_patch16_224", checkpoint="dino.pth")
    EncoderCfg(name="vit_base_patch16_224", checkpoint="dino.pth", mean=(0.485, 0.456, 0.406),
               std=(0.229, 0.224, 0.225))
    EncoderCfg(name="vit_base_patch16_224.dino", checkpoint="dino.pth")  # the tag carries them


def test_unknown_encoder_name_suggests_near_names() -> None:
    with pytest.raises(ValueError, match="dinov2_vits14"):
        check_encoder_name("dinov2_vits41")
    check_encoder_name("dinov2_vits14")
    check_encoder_name("vit_small_patch16_224")


# ----------------------------------------------------------------------------- checkpoints


def test_dino_teacher_checkpoint_loads_with_identical_outputs(dino_cfg, tmp_path: Path) -> None:
    source = make_encoder(dino_cfg, seed=1)
    student = make_encoder(dino_cfg, seed=3)
    state = source.model.state_dict()
    checkpoint = {
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                    "head.mlp.0.weight": torch.randn(64, 48), "head.mlp.0.bias": torch.randn(64),
                    "head.last_layer.weight_g": torch.randn(128, 1)},
        "student": {f"module.backbone.{k}": v for k, v in student.model.state_dict().items()},
        "epoch": 100,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    loaded = make_encoder(dino_cfg, seed=2, checkpoint=str(path))
    assert_different_encoder_outputs(make_encoder(dino_cfg, seed=2), source, size=32)
    assert_same_encoder_outputs(loaded, source, size=32)


def test_dino_training_checkpoint_with_its_args_loads(dino_cfg, tmp_path: Path) -> None:
    source = make_encoder(dino_cfg, seed=1)
    checkpoint = {"teacher": {f"backbone.{k}": v for k, v in source.model.state_dict().items()},
                  "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536), "epoch": 100}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    assert_same_encoder_outputs(make_encoder(dino_cfg, seed=2, checkpoint=str(path)), source, size=32)


def test_dinov2_hub_state_dict_loads_with_identical_outputs(tiny_encoder_cfg, tmp_path: Path) -> None:
    source = make_encoder(tiny_encoder_cfg, seed=1)
    state = {**source.model.state_dict(), "mask_token": torch.zeros(1, 48)}  # as torch.hub's DINOv2 has
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    loaded = make_encoder(tiny_encoder_cfg, seed=2, checkpoint=str(path))
    assert_different_encoder_outputs(make_encoder(tiny_encoder_cfg, seed=2), source, size=28)
    assert_same_encoder_outputs(loaded, source, size=28)


def test_dinov2_hub_state_dict_at_another_resolution_resamples_position_embeddings(tiny_encoder_cfg,
                                                                                    tmp_path: Path) -> None:
    source = make_encoder(tiny_encoder_cfg, seed=1, image_size=56)  # a 4x4 grid, like 518 px -> 37x37
    state = {**source.model.state_dict(), "mask_token": torch.zeros(1, 48)}
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    loaded = make_encoder(tiny_encoder_cfg, seed=2, checkpoint=str(path))
    assert loaded.model.pos_embed.shape == (1, 1 + 4, 48)
    torch.testing.assert_close(loaded.model.blocks[1].mlp.fc2.weight, source.model.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(loaded.model.cls_token, source.model.cls_token)


def test_a_checkpoint_uri_must_be_resolved_before_building(tiny_encoder_cfg) -> None:
    with pytest.raises(ValueError, match="tracking.local_path"):
        make_encoder(tiny_encoder_cfg, checkpoint="s3://bucket/encoder.safetensors")


def test_safetensors_checkpoint_loads_with_identical_outputs(tiny_encoder_cfg, tmp_path: Path) -> None:
    source = make_encoder(tiny_encoder_cfg, seed=1)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = make_encoder(tiny_encoder_cfg, seed=2, checkpoint=str(path))
    assert_same_encoder_outputs(loaded, source, size=28)


def test_lightning_style_prefixed_state_dict_loads(tiny_encoder_cfg, tmp_path: Path) -> None:
    source = make_encoder(tiny_encoder_cfg, seed=1)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.model.state_dict().items()}}, path)
    assert_same_encoder_outputs(make_encoder(tiny_encoder_cfg, seed=2, checkpoint=str(path)), source, size=28)


@pytest.mark.parametrize("mismatch", ["deeper", "unrelated_tensors"])
def test_checkpoint_that_does_not_fit_raises_value_error(tiny_encoder_cfg, tmp_path: Path, mismatch: str) -> None:
    if mismatch == "deeper":
        other = make_encoder(tiny_encoder_cfg, model_kwargs={"depth": 3})
        state = other.model.state_dict()
    else:
        state = {"linear.weight": torch.zeros(3, 3)}
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit"):
        make_encoder(tiny_encoder_cfg, checkpoint=str(path))


def test_checkpoint_of_another_width_raises_value_error(tiny_encoder_cfg, tmp_path: Path) -> None:
    other = make_encoder(tiny_encoder_cfg, model_kwargs={"embed_dim": 64})
    path = tmp_path / "wider.pth"
    torch.save(other.model.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        make_encoder(tiny_encoder_cfg, checkpoint=str(path))


class _SideEffect:
    """Unpickling this creates ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_checkpoint_with_arbitrary_pickled_object_is_refused(tiny_encoder_cfg, tmp_path: Path) -> None:
    source = make_encoder(tiny_encoder_cfg, seed=1)
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": source.model.state_dict(), "payload": _SideEffect(marker)}, path)
    with pytest.raises((pickle.UnpicklingError, ValueError, RuntimeError)):
        make_encoder(tiny_encoder_cfg, checkpoint=str(path))
    assert not marker.exists(), "the checkpoint's pickled code ran"


def test_missing_checkpoint_file_raises(tiny_encoder_cfg, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        make_encoder(tiny_encoder_cfg, checkpoint=str(tmp_path / "nope.pth"))
