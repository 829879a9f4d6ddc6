"""Strict pydantic models of cells and their sections: YAML (``config_file``) -> validated model
-> plain arguments.

Light on purpose: validating a config imports no torch, timm, MLflow or Ray. Names are checked
against the light registries (``aliases``, ``attacks``, ``data.catalog``); a timm name that is not
an alias is checked against timm when the encoder is built (and by ``ssl-robust sweep`` before any
trial starts).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt,
                      SerializerFunctionWrapHandler, ValidationInfo, field_validator, model_serializer,
                      model_validator)

from ssl_robust.aliases import ENCODERS, is_tagged
from ssl_robust.attacks import ATTACKS, check_applies
from ssl_robust.data.catalog import DATASETS

Norm = Literal["linf", "l2"]
Precision = Literal["fp32", "bf16", "fp16"]  # fp32, or bf16/fp16 autocast
Triple = tuple[float, float, float]
_TIMM_NAME = r"^[a-z0-9_]+(\.[a-z0-9_]+)?$"
_DEVICE = r"^(auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$"
MAX_STEPS = 10_000  # PGD steps of one attack (DeACL's and its probe's too)
MAX_RESTARTS = 100


def parse_budget(value: Any) -> float:
    """Accept a number or a fraction string such as ``"8/255"``; reject negatives."""
    if isinstance(value, str):
        try:
            value = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"expected a number or a fraction like '8/255', got {value!r}") from err
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number or a fraction like '8/255', got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {value}")
    return float(value)


Budget = Annotated[float, BeforeValidator(parse_budget)]


def _device_name(value: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]`` (availability is checked where
    the device is used: the driver of a sweep need not have the trials' GPU)."""
    if not re.match(_DEVICE, value):
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return value


Device = Annotated[str, AfterValidator(_device_name)]


def patch_size_hint(name: str, model_kwargs: dict[str, Any]) -> int | None:
    """The patch size an alias or timm name implies (``..._patch14_...``), without timm; None if unknown."""
    if "patch_size" in model_kwargs:
        value = model_kwargs["patch_size"]
        return int(value[0] if isinstance(value, (list, tuple)) else value)
    found = re.search(r"patch(\d+)", ENCODERS.get(name).timm_name if name in ENCODERS else name)
    return int(found.group(1)) if found else None


def check_patch_multiple(image_size: int, patch: int, name: str) -> None:
    """Raise a ValueError naming ``encoder.image_size`` unless it is a multiple of ``patch``."""
    if image_size % patch:
        near = sorted({max(patch, image_size // patch * patch), (image_size // patch + 1) * patch})
        raise ValueError(f"encoder.image_size={image_size} is not a multiple of the patch size {patch} of "
                         f"{name!r}; use {' or '.join(map(str, near))}")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderCfg(StrictModel):
    """Which encoder: an alias (``aliases.py``) or timm name, optional fine-tuned weights."""

    name: str = "dinov2_vits14"
    pretrained: bool | None = None  # None = the alias's default (hub weights where they exist)
    checkpoint: str | None = None  # path, file://, s3://bucket/key or runs:/<run_id>/<path>
    checkpoint_key: str | None = None  # prefix of the encoder's keys in it (backbone.encoder.); None = found
    image_size: int | None = Field(default=None, gt=0)  # also the data's input size; None = the alias's
    layer: int | None = None  # block whose CLS and patch tokens the heads read; None = last (after final norm)
    mean: Triple | None = None  # None = the alias's (or timm's pretrained tag's)
    std: Triple | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        near_alias = difflib.get_close_matches(name, ENCODERS.names(), n=1, cutoff=0.8)
        if name not in ENCODERS and (near_alias or not re.match(_TIMM_NAME, name)):
            raise ValueError(ENCODERS.unknown_message(name) + "; or any timm ViT name")
        return name

    @model_validator(mode="after")
    def _input_contract_known(self) -> "EncoderCfg":
        if (self.mean is None) != (self.std is None):
            raise ValueError("encoder.mean and encoder.std: set both or neither")
        untagged = self.name not in ENCODERS and not is_tagged(self.name)
        if untagged and self.checkpoint and self.mean is None:
            raise ValueError(f"encoder.mean/encoder.std: required for a checkpoint on the untagged timm "
                             f"name {self.name!r} (DINO and DINOv2 use ImageNet's (0.485, 0.456, 0.406) "
                             f"/ (0.229, 0.224, 0.225)); or use an alias such as 'dino_vitb16'")
        return self

    @model_validator(mode="after")
    def _image_size_fits_patches(self) -> "EncoderCfg":
        patch = patch_size_hint(self.name, self.model_kwargs)
        if self.image_size is not None and patch and "name" in self.model_fields_set:  # not a defaults section
            check_patch_multiple(self.image_size, patch, self.name)
        return self

    @model_validator(mode="after")
    def _key_needs_checkpoint(self) -> "EncoderCfg":
        if self.checkpoint_key is not None and self.checkpoint is None and "name" in self.model_fields_set:
            raise ValueError("encoder.checkpoint_key: set only with encoder.checkpoint (the prefix of the encoder's "
                             "keys in that file)")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An unset ``checkpoint_key`` is left out, so cell and fine-tune ids from before it stay."""
        data = handler(self)
        if self.checkpoint_key is None:
            data.pop("checkpoint_key", None)
        return data


class DataCfg(StrictModel):
    """Which data set, where it lives, and how many images each split contributes."""

    name: str = "synthetic"
    root: Path | None = None
    task: str | None = None  # None = the data set's own task
    download: bool = False
    n_train: int | None = Field(default=None, gt=0)  # head-training subset (None = all)
    n_val: int | None = Field(default=None, gt=0)
    n_samples: int | None = Field(default=64, gt=0)  # attacked test images (None = whole test split)
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    eigen_crop: bool = True  # NYUv2 evaluation crop
    # test-split protocol; None = slide (dense), resize (classification); whole = native size, one pass
    eval: Literal["resize", "slide", "whole"] | None = None
    # sliding-window stride in px, or per window size ({224: 100, 518: 341}); None = round(2/3 of the window)
    slide_stride: PositiveInt | dict[PositiveInt, PositiveInt] | None = None
    slide_average: Literal["logits", "probs"] = "logits"  # what overlapping windows average (probs: segmentation)
    nyu_train: Literal["labelled", "sync"] = "labelled"  # NYUv2 train/val source: labelled .mat or raw sync frames
    voc_background: Literal["include", "exclude"] = "include"  # VOC: 21 classes, or 20 with background ignored

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        DATASETS.get(name)
        return name

    @field_validator("task")
    @classmethod
    def _task_of_dataset(cls, task: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if task is not None and name in DATASETS and task not in DATASETS.get(name).infos:
            raise ValueError(f"data set {name!r} has no task {task!r}; allowed: {sorted(DATASETS.get(name).infos)}")
        return task

    @model_validator(mode="after")
    def _switches_fit_data(self) -> "DataCfg":
        if not self.model_fields_set & {"name", "task"}:  # a sweep's defaults: checked in each cell
            return self
        if self.slide_average == "probs" and self.resolved_task != "segmentation":
            raise ValueError(f"data.slide_average='probs' needs a segmentation task (class probabilities to "
                             f"average); {self.name!r} is evaluated on {self.resolved_task!r}, whose windows "
                             f"average their outputs: use 'logits'")
        if self.voc_background == "exclude" and self.name != "voc2012":
            raise ValueError(f"data.voc_background applies to voc2012 only, not {self.name!r}")
        return self

    @model_serializer(mode="wrap")
    def _without_default_switches(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``slide_average`` and ``voc_background`` at their defaults are left out, so cell and head
        ids from before them stay."""
        data = handler(self)
        for name in ("slide_average", "voc_background"):
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data

    @property
    def resolved_task(self) -> str:
        return self.task or DATASETS.get(self.name).default_task


class HeadCfg(StrictModel):
    """The linear head trained on the frozen encoder, and its training recipe."""

    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=64, gt=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # adam: L2 weight decay; sgd: momentum 0.9
    schedule: Literal["cosine", "poly", "constant"] = "cosine"  # per step; poly: linear decay to 0 (mmseg, power 1)
    warmup_steps: int = Field(default=0, ge=0)  # linear warm-up from lr * 1e-6 over these steps (mmseg's)
    # train images: none = features cached once; flip / crop_flip (random S x S crop, then flip) =
    # features computed from freshly augmented images every epoch
    augment: Literal["none", "flip", "crop_flip"] = "none"
    depth_loss: Literal["silog", "silog_grad"] = "silog"  # silog_grad: + 0.5 x multi-scale log-depth gradient loss
    n_bins: int = Field(default=256, gt=1)  # depth head; its range is the data set's depth range
    classifier_input: Literal["cls", "cls_patch_mean"] = "cls"  # DINOv2's linear protocol: cls_patch_mean
    depth_head: Literal["smooth", "dinov2"] = "smooth"  # softmax over bins, or DINOv2's (x4 upsampling, ReLU + 0.1)
    checkpoint: str | None = None  # a fitted head to reuse instead of fitting
    features: Literal["disk", "memory"] = "disk"  # float16 feature cache: a temporary folder, or RAM

    @model_serializer(mode="wrap")
    def _without_default_recipe(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The recipe switches at their defaults are left out, so head and cell ids from before them stay."""
        data = handler(self)
        for name in RECIPE_SWITCHES:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data


RECIPE_SWITCHES = ("optimizer", "schedule", "warmup_steps", "augment", "depth_loss")


class AttackCfg(StrictModel):
    """One attack: a registered objective driven by the PGD engine."""

    name: str = "embed"
    eps: Budget = 8 / 255
    step_size: Budget | None = None  # None = 2.5 * eps / steps
    steps: int = Field(default=10, ge=0, le=MAX_STEPS)
    norm: Norm = "linf"
    restarts: int = Field(default=1, ge=1, le=MAX_RESTARTS)
    random_start: bool = True
    stop_when_fooled: bool = True  # classification: stop attacking samples already fooled
    # dense tasks: each image's final or most damaging iterate; classification without the cascade
    # (stop_when_fooled: false): final = each sample's final iterate, worst = any iterate that fooled it
    select: Literal["final", "worst"] = "worst"
    layer: int | None = None  # EmbedAttack's target block; None = the last (after the final norm)
    optimizer: Literal["pgd", "apgd"] | None = None  # None = the attack's own (pgd; apgd for apgd_* and standard)
    targets: int = Field(default=9, ge=1, le=100)  # APGD-T: target classes, the top ones of the clean output

    @field_validator("name")
    @classmethod
    def _known_attack(cls, name: str) -> str:
        ATTACKS.get(name)
        return name

    @model_validator(mode="after")
    def _eps_in_pixel_units(self) -> "AttackCfg":
        """Images are in [0, 1]: an L-inf budget of 1 or more covers the whole box (``8`` is a
        mistake for ``8/255``)."""
        if self.norm == "linf" and self.eps >= 1:
            raise ValueError(f"attack.eps={self.eps:g} is not an L-inf budget in [0, 1] pixel space; "
                             f"did you mean {self.eps:g}/255?")
        return self

    @property
    def resolved_step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self.eps / max(self.steps, 1)

    @property
    def resolved_optimizer(self) -> str:
        return self.optimizer or ATTACKS.get(self.name).optimizer

    @property
    def gradient_steps(self) -> int:
        """Gradient steps per restart: none for a gradient-free attack (uniform noise)."""
        return 0 if ATTACKS.get(self.name).gradient_free else self.steps

    @property
    def moves_input(self) -> bool:
        """Whether the attack can move the input at all: eps > 0 and a step or a random start to take."""
        return self.eps > 0 and (self.gradient_steps > 0 or self.random_start)


class LoaderCfg(StrictModel):
    """How images are loaded (torch DataLoader settings); does not change any result."""

    num_workers: int = Field(default=0, ge=0)  # worker processes; 0 = load in the main process
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies
    persistent_workers: bool = False  # keep workers alive between passes over a split

    @model_validator(mode="after")
    def _persistent_needs_workers(self) -> "LoaderCfg":
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError("persistent_workers: true needs num_workers >= 1")
        return self


class CellFields(StrictModel):
    """The fields of a cell, each with its default; a sweep's ``defaults:`` section has this shape."""

    encoder: EncoderCfg = Field(default_factory=EncoderCfg)
    data: DataCfg = Field(default_factory=DataCfg)
    head: HeadCfg = Field(default_factory=HeadCfg)
    attack: AttackCfg = Field(default_factory=AttackCfg)
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    device: Device = "auto"
    precision: Precision = "fp32"  # of attacks and feature extraction
    # the scored model and EmbedAttack's representation under torch.compile (ssl_robust/compiled.py);
    # the same result up to float rounding, so not part of the cell's identity
    compile: bool = False
    loader: LoaderCfg = Field(default_factory=LoaderCfg)


# Where and how a cell runs, not what it computes: left out of ``cell_id`` (and of ``head_id``) and
# of the report's configuration columns.
LOCATIONS = ("device", "compile", "head.checkpoint", "head.features", "data.root", "data.download",
             "loader.num_workers", "loader.pin_memory", "loader.persistent_workers")


def _exclusion(dotted: tuple[str, ...]) -> dict[str, Any]:
    """``model_dump``'s ``exclude`` of dotted field names: ``{"device": True, "head": {"checkpoint"}}``."""
    out: dict[str, Any] = {}
    for name in dotted:
        section, _, field = name.partition(".")
        if field:
            out.setdefault(section, set()).add(field)
        else:
            out[section] = True
    return out


class CellCfg(CellFields):
    """One grid point: encoder x data set/task x attack x eps."""

    @model_validator(mode="after")
    def _attack_fits_task(self) -> "CellCfg":
        check_applies(self.attack.name, self.data.resolved_task)
        return self

    @model_validator(mode="after")
    def _head_recipe_fits_task(self) -> "CellCfg":
        task = self.data.resolved_task
        if self.head.depth_loss != "silog" and task != "depth":
            raise ValueError(f"head.depth_loss={self.head.depth_loss!r} trains a depth head; {self.data.name!r} "
                             f"is evaluated on {task!r}")
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that define the result: none of ``LOCATIONS``; the precision, the optimiser and
        the target count only where they are not their defaults (so cells of the attacks that
        existed before them keep their ids)."""
        data = self.model_dump(mode="json", exclude=_exclusion(LOCATIONS))
        if self.precision == "fp32":
            del data["precision"]
        for name, default in (("optimizer", None), ("targets", AttackCfg.model_fields["targets"].default)):
            if data["attack"][name] == default:
                del data["attack"][name]
        return data

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def head_id(self) -> str:
        """Hash of what a fitted head depends on: encoder, data, head and seed, not the attack."""
        ident = self.identity()
        blob = json.dumps({k: ident[k] for k in ("encoder", "data", "head", "seed")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
