"""Encoders: pixel-space wrapper around timm ViTs, and checkpoint loading in the original layouts."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import pickle
import re
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from ssl_robust.config import CellCfg, EncoderCfg
from ssl_robust.aliases import ENCODERS
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.config_file import ConfigError
from ssl_robust.encoders import (CheckpointError, ResolvedEncoders, build_model, convert_checkpoint, create_encoder,
                                 load_backbone_weights, resolve_encoder)
from ssl_robust.registry import UnknownNameError

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
        assert timm.is_model(resolve_encoder(EncoderCfg(name=alias)).timm_name), alias
    assert resolve_encoder(EncoderCfg(name="vit_small_patch16_224")).timm_name == "vit_small_patch16_224"


def test_resolution_reads_the_architecture_and_input_contract_from_timm() -> None:
    found = resolve_encoder(EncoderCfg(name="dinov2_vitl14"))
    assert (found.timm_name, found.image_size, found.patch_size) == ("vit_large_patch14_dinov2.lvd142m", 518, 14)
    assert (found.width, found.depth, found.heads, found.mlp_ratio, found.prefix_tokens) == (1024, 24, 16, 4.0, 1)
    registers = resolve_encoder(EncoderCfg(name="vit_small_patch14_reg4_dinov2.lvd142m"))
    assert (registers.prefix_tokens, registers.image_size, registers.mean) == (5, 518, (0.485, 0.456, 0.406))


def test_a_config_overrides_the_aliases_size_and_architecture(tiny_encoder_cfg) -> None:
    found = resolve_encoder(EncoderCfg(**{**tiny_encoder_cfg, "image_size": 56, "model_kwargs": {"depth": 3}}))
    assert (found.image_size, found.depth, found.model_kwargs["img_size"]) == (56, 3, 56)
    assert create_encoder(EncoderCfg(**tiny_encoder_cfg), found).image_size == 56  # built as resolved


def test_a_resolution_survives_a_trials_plain_config() -> None:
    encoders = ResolvedEncoders([EncoderCfg(name="tiny_dinov2"), EncoderCfg(name="tiny_dino")])
    assert ResolvedEncoders.from_dict(json.loads(json.dumps(encoders.as_dict()))).found == encoders.found


def test_checkpoint_and_layer_do_not_change_a_resolution(tiny_encoder_cfg) -> None:
    encoders = ResolvedEncoders([EncoderCfg(**tiny_encoder_cfg)])
    other = EncoderCfg(**tiny_encoder_cfg, checkpoint="student.safetensors", layer=1)
    assert encoders.of(other) is encoders.of(EncoderCfg(**tiny_encoder_cfg)) and len(encoders.found) == 1


def test_an_encoder_that_is_not_a_vit_is_refused_when_resolved() -> None:
    with pytest.raises(ConfigError, match="timm cannot build 'resnet18'"):  # it takes no img_size
        resolve_encoder(EncoderCfg(name="resnet18"))
    with pytest.raises(ConfigError, match="encoder.name: 'swin_tiny_patch4_window7_224' is not a timm ViT"):
        resolve_encoder(EncoderCfg(name="swin_tiny_patch4_window7_224"))


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
    with pytest.raises(UnknownNameError, match="dinov2_vits14"):
        resolve_encoder(EncoderCfg.model_construct(name="dinov2_vits41"))
    with pytest.raises(UnknownNameError, match="vit_small_patch16_224"):
        resolve_encoder(EncoderCfg.model_construct(name="vit_small_patch16_225"))


def test_encoder_checks_image_size_against_the_models_patch_size() -> None:
    cfg = EncoderCfg.model_construct(**{**EncoderCfg().model_dump(), "name": "tiny_dinov2", "image_size": 30})
    with pytest.raises(ConfigError, match=r"encoder\.image_size=30 is not a multiple of the patch size 14"):
        resolve_encoder(cfg)


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


# ----------------------------------------------------------------------------- Lightning checkpoints (DeACL release)

TINY_DINO = {"name": "tiny_dino"}
PRE_CHECKPOINT_KEY_FIELDS = {"name", "pretrained", "checkpoint", "image_size", "layer", "mean", "std", "model_kwargs"}


class RunConfig:
    """A training script's own config object in ``hyper_parameters``: weights_only=True refuses it."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def lightning_checkpoint(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                         prefix: str = "backbone.encoder.", teacher_prefix: str = "momentum_backbone.encoder.",
                         **extra: Any) -> dict[str, Any]:
    """What ``Trainer.save_checkpoint`` writes for the seed's DeACL module: the fine-tuned student
    under ``prefix`` (``conf/ssl_model/dino_v1_vitb16_adv_ours.yaml``: ``encoder_name:
    backbone.encoder``), its frozen teacher and a projection head beside it, and the trainer state."""
    state = OrderedDict({**{prefix + k: v for k, v in student.items()},
                         **{teacher_prefix + k: v for k, v in teacher.items()},
                         "head.mlp.0.weight": torch.randn(64, 48), "head.mlp.0.bias": torch.randn(64)})
    return {
        "epoch": 99, "global_step": 31_200, "pytorch-lightning_version": "1.9.5",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100, "completed": 99}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.25), "dirpath": pathlib.PurePosixPath("tmp/checkpoints")}},
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(48)}},
                              "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [0.05], "last_epoch": 99, "_step_count": 100, "T_max": 100, "eta_min": 0}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"args": argparse.Namespace(lr=0.05, eps=4 / 255, max_epochs=100),
                             "model_cfg": RunConfig(name="dino_v1_vitb16_adv_ours", feature_dim=768)},
        **extra,
    }


@pytest.fixture()
def deacl_release(tmp_path: Path) -> dict[str, Any]:
    """A DeACL-style Lightning ``.ckpt`` of tiny_dino weights, and the same student weights as safetensors."""
    student = make_encoder(TINY_DINO, seed=1).model.state_dict()
    teacher = make_encoder(TINY_DINO, seed=4).model.state_dict()
    ckpt, plain = tmp_path / "deacl-ep=100.ckpt", tmp_path / "student.safetensors"
    torch.save(lightning_checkpoint(student, teacher), ckpt)
    save_file({k: v.contiguous() for k, v in student.items()}, str(plain))
    return {"ckpt": ckpt, "plain": plain, "student": student, "teacher": teacher}


def assert_identical_outputs(a, b, size: int = 32) -> None:
    x = pixels(size=size)
    with torch.no_grad():
        (cls_a, tok_a), (cls_b, tok_b) = a.features(x), b.features(x)
    assert torch.equal(cls_a, cls_b) and torch.equal(tok_a, tok_b)


def test_lightning_checkpoint_is_not_weights_only(deacl_release) -> None:
    with torch.serialization.safe_globals([argparse.Namespace]):
        with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
            torch.load(deacl_release["ckpt"], map_location="cpu", weights_only=True)
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(deacl_release["ckpt"])
    assert f"{__name__}.RunConfig" in unknown


def test_lightning_checkpoint_loads_with_outputs_identical_to_its_safetensors(deacl_release) -> None:
    from_ckpt = make_encoder(TINY_DINO, seed=2, checkpoint=str(deacl_release["ckpt"]))
    from_plain = make_encoder(TINY_DINO, seed=3, checkpoint=str(deacl_release["plain"]))
    assert_identical_outputs(from_ckpt, from_plain)
    assert_different_encoder_outputs(from_ckpt, make_encoder(TINY_DINO, seed=2), size=32)


def test_lightning_checkpoint_loads_through_a_file_uri_resolved_at_the_edge(deacl_release) -> None:
    from ssl_robust.tracking import localize

    cfg = CellCfg(encoder={**TINY_DINO, "checkpoint": deacl_release["ckpt"].as_uri()})
    local = localize(cfg).encoder
    assert local.checkpoint == str(deacl_release["ckpt"])
    assert_identical_outputs(create_encoder(local), make_encoder(TINY_DINO, checkpoint=str(deacl_release["plain"])))


@pytest.mark.parametrize("prefix", ["backbone.encoder.", "backbone.", "model.", "student.", "module.backbone.", ""])
def test_the_encoders_prefix_is_found(prefix: str, tmp_path: Path) -> None:
    student = make_encoder(TINY_DINO, seed=1).model.state_dict()
    teacher = make_encoder(TINY_DINO, seed=4).model.state_dict()
    path = tmp_path / "last.ckpt"
    checkpoint = lightning_checkpoint(student, teacher, prefix=prefix, teacher_prefix="momentum_" + prefix)
    if not prefix:  # a flat state dict holds one model
        checkpoint["state_dict"] = OrderedDict(student)
    torch.save(checkpoint, path)
    model = build_model(resolve_encoder(EncoderCfg(**TINY_DINO)), pretrained=False)
    assert load_backbone_weights(model, path) == prefix
    assert all(torch.equal(v, student[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("key", ["backbone.encoder.", "backbone.encoder"])
def test_an_explicit_checkpoint_key_selects_those_tensors(deacl_release, key: str) -> None:
    student = make_encoder(TINY_DINO, seed=2, checkpoint=str(deacl_release["ckpt"]), checkpoint_key=key)
    assert_identical_outputs(student, make_encoder(TINY_DINO, checkpoint=str(deacl_release["plain"])))
    teacher = make_encoder(TINY_DINO, checkpoint=str(deacl_release["ckpt"]),
                           checkpoint_key="momentum_backbone.encoder.")
    assert all(torch.equal(v, deacl_release["teacher"][k]) for k, v in teacher.model.state_dict().items())


def test_a_wrong_checkpoint_key_names_the_keys_found(deacl_release) -> None:
    with pytest.raises(CheckpointError, match="checkpoint_key='encoder.'") as err:
        make_encoder(TINY_DINO, checkpoint=str(deacl_release["ckpt"]), checkpoint_key="encoder.")
    assert "'backbone.encoder." in str(err.value) and "leave it unset" in str(err.value)


def test_a_state_dict_of_another_model_errors_naming_its_keys_and_the_prefixes_tried(tmp_path: Path) -> None:
    resnet = {f"backbone.{k}": torch.zeros(2) for k in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight")}
    path = tmp_path / "resnet.ckpt"
    torch.save(lightning_checkpoint({}, {}, **{"state_dict": OrderedDict(resnet)}), path)
    with pytest.raises(CheckpointError, match="does not fit") as err:
        make_encoder(TINY_DINO, checkpoint=str(path))
    message = str(err.value)
    assert "'backbone.conv1.weight'" in message and "tried ''" in message and "'backbone.'" in message
    assert "encoder.checkpoint_key" in message


def test_a_lightning_checkpoint_of_a_deeper_vit_errors_naming_the_prefix(tmp_path: Path) -> None:
    deeper = make_encoder(TINY_DINO, model_kwargs={"depth": 3}).model.state_dict()
    path = tmp_path / "deeper.ckpt"
    torch.save(lightning_checkpoint(deeper, deeper), path)
    with pytest.raises(CheckpointError, match=r"keys under 'backbone.encoder.'\) does not fit.*blocks\.2\."):
        make_encoder(TINY_DINO, checkpoint=str(path))


class Payload:
    """Unpickling this creates ``marker`` by the named route: what a tampered checkpoint could do."""

    def __init__(self, route: str, marker: Path) -> None:
        self.route, self.marker = route, marker

    def __reduce__(self):
        return {
            "os.system": (os.system, (f"touch {self.marker}",)),
            "builtins.eval": (eval, (f"open({str(self.marker)!r}, 'w')",)),
            "builtins.exec": (exec, (f"open({str(self.marker)!r}, 'w')",)),
            "subprocess.call": (subprocess.call, (["touch", str(self.marker)],)),
            "pathlib.Path.touch": (pathlib.Path.touch, (pathlib.Path(self.marker),)),
        }[self.route]


@pytest.mark.parametrize("route, refusal", [
    ("os.system", "names posix.system"), ("builtins.eval", "names builtins.eval"),
    ("builtins.exec", "names builtins.exec"), ("subprocess.call", "names commands.call"),
    ("pathlib.Path.touch", "unrecognized function <inert builtins.getattr>"),  # a placeholder is never called
])
def test_a_malicious_lightning_checkpoint_runs_nothing(deacl_release, tmp_path: Path, route: str,
                                                       refusal: str) -> None:
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(route, live)))
    assert live.exists(), "the payload must be one that runs when unpickled normally"
    marker = tmp_path / "pwned"
    checkpoint = lightning_checkpoint(deacl_release["student"], deacl_release["teacher"])
    checkpoint["hyper_parameters"]["payload"] = Payload(route, marker)
    path = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=re.escape(refusal)):
        make_encoder(TINY_DINO, checkpoint=str(path))
    assert not marker.exists(), "the checkpoint's pickled code ran"


@pytest.mark.parametrize("key, encoder", [(None, "tiny_dino"), (None, None), ("backbone.encoder.", None)])
def test_convert_writes_plain_timm_weights_with_identical_outputs(deacl_release, tmp_path: Path, key: str | None,
                                                                 encoder: str | None) -> None:
    out = tmp_path / "converted.safetensors"
    resolved = resolve_encoder(EncoderCfg(name=encoder)) if encoder else None
    prefix, count = convert_checkpoint(deacl_release["ckpt"], out, key=key, encoder=resolved)
    assert (prefix, count) == ("backbone.encoder.", len(deacl_release["student"]))
    assert set(load_file(str(out))) == set(deacl_release["student"])
    assert_identical_outputs(make_encoder(TINY_DINO, seed=2, checkpoint=str(out)),
                             make_encoder(TINY_DINO, seed=3, checkpoint=str(deacl_release["plain"])))
    assert list(tmp_path.glob(".*partial*")) == []


def test_convert_checks_the_written_file_against_the_encoder_and_writes_nothing_on_failure(deacl_release,
                                                                                         tmp_path: Path) -> None:
    out = tmp_path / "converted.safetensors"
    with pytest.raises(CheckpointError, match="does not fit"):
        convert_checkpoint(deacl_release["ckpt"], out, encoder=resolve_encoder(EncoderCfg(name="tiny_dinov2")))
    assert not out.exists() and list(tmp_path.glob(".*partial*")) == []


def test_an_unset_checkpoint_key_leaves_cell_and_fine_tune_ids_as_they_were(tiny_cell_cfg) -> None:
    cell = CellCfg.model_validate(tiny_cell_cfg)
    identity = cell.identity()
    assert set(identity["encoder"]) == PRE_CHECKPOINT_KEY_FIELDS
    with_field = {**identity, "encoder": {**identity["encoder"], "checkpoint_key": None}}
    without_field = {**with_field, "encoder": {k: v for k, v in with_field["encoder"].items() if k != "checkpoint_key"}}
    assert cell.cell_id == hashlib.sha256(json.dumps(without_field, sort_keys=True).encode()).hexdigest()[:16]
    assert cell.cell_id != hashlib.sha256(json.dumps(with_field, sort_keys=True).encode()).hexdigest()[:16]
    assert set(DeaclCfg().model_dump(mode="json")["encoder"]) == PRE_CHECKPOINT_KEY_FIELDS


def test_a_checkpoint_key_is_part_of_the_encoders_identity(tiny_cell_cfg) -> None:
    def cell_id(**encoder: Any) -> str:
        return CellCfg.model_validate({**tiny_cell_cfg, "encoder": {**tiny_cell_cfg["encoder"], **encoder}}).cell_id

    ids = {cell_id(checkpoint="x.ckpt"), cell_id(checkpoint="x.ckpt", checkpoint_key=""),
           cell_id(checkpoint="x.ckpt", checkpoint_key="backbone."),
           cell_id(checkpoint="x.ckpt", checkpoint_key="backbone.encoder.")}
    assert len(ids) == 4
    with pytest.raises(ValueError, match="checkpoint_key: set only with encoder.checkpoint"):
        EncoderCfg(name="tiny_dino", checkpoint_key="backbone.")
