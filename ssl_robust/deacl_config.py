"""DeACL fine-tuning configs: the fine-tune, its inner EmbedAttack and its per-epoch probe.

Light like ``config``: validating one imports no torch.
"""
from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from ssl_robust.config import MAX_STEPS, Budget, DataCfg, Device, EncoderCfg, Norm, Precision, StrictModel
from ssl_robust.config_file import ConfigError
from ssl_robust.data.catalog import DATASETS


def _augment_name(value: Any) -> Any:
    """Read the old boolean switch: ``true`` = ``rrc``, ``false`` = ``none``."""
    if isinstance(value, bool):
        return "rrc" if value else "none"
    return value


# rrc: random resized crop + flip (ours); seed: RandomCrop(size, padding=size/8) + flip (the seed's)
Augment = Annotated[Literal["rrc", "seed", "none"], BeforeValidator(_augment_name)]
LEGACY_AUGMENT = {"rrc": True, "none": False}  # how the boolean field appeared in a deacl_id
NEW_FIELDS = ("warmup_start_lr", "warmup_unit", "val_fraction")  # left out of deacl_id at their defaults


class DeaclAttackCfg(StrictModel):
    """DeACL's inner EmbedAttack (cosine objective) on the student."""

    eps: Budget = 8 / 255
    step_size: Budget = 2 / 255
    steps: int = Field(default=5, ge=0, le=MAX_STEPS)
    norm: Norm = "linf"
    random_start: bool = True


class ProbeCfg(StrictModel):
    """The per-epoch linear probe on CLS: fitted on the data set's val split, scored on test."""

    n_train: int | None = Field(default=256, gt=0)  # val-split images the probe is fitted on
    n_samples: int | None = Field(default=256, gt=0)  # test images scored clean and under EmbedAttack
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-2, gt=0)
    batch_size: int = Field(default=64, gt=0)
    eps: Budget | None = None  # the probe's EmbedAttack; None = the training attack's (fix it when searching eps)
    steps: int | None = Field(default=None, ge=0, le=MAX_STEPS)


class DeaclCfg(StrictModel):
    """DeACL robust fine-tuning: the student starts from the frozen teacher and minimises
    -cos(f_R(x), f(x)) - gamma * cos(f_R(x_adv), f_R(x)) (plus the same on patch tokens, weighted
    by ``dense_weight``)."""

    name: str = Field(default="deacl", pattern=r"^[A-Za-z0-9_.\-]+$")  # the MLflow experiment
    encoder: EncoderCfg = Field(default_factory=EncoderCfg)
    data: DataCfg = Field(default_factory=lambda: DataCfg(name="synthetic", task="classification"))
    augment: Augment = "rrc"  # per-batch augmentation; true/false read as rrc/none
    crop_scale: tuple[float, float] = (0.5, 1.0)  # rrc's area fraction
    gamma: float = Field(default=2.0, ge=0)
    dense_weight: float = Field(default=0.0, ge=0)  # 0 = the paper's DeACL (CLS only)
    attack: DeaclAttackCfg = Field(default_factory=DeaclAttackCfg)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.5, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_epochs: float = Field(default=10.0, ge=0)
    warmup_start_lr: float | None = Field(default=None, ge=0)  # None: lr * (k + 1) / warmup
    warmup_unit: Literal["step", "epoch"] = "step"  # how often the schedule is evaluated
    epochs: int = Field(default=101, ge=1)
    batch_size: int = Field(default=128, gt=0)
    grad_accum: int = Field(default=1, ge=1)
    precision: Precision = "fp32"
    val_fraction: float | None = Field(default=None, ge=0, lt=1)  # None = data.val_fraction; 0 = no held-out part
    checkpoint_every: int = Field(default=25, ge=1)
    probe: ProbeCfg = Field(default_factory=ProbeCfg)
    seed: int = 0
    device: Device = "auto"

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"need 0 < low <= high <= 1, got {value}")
        return value

    def identity(self) -> dict[str, Any]:
        """The fields that define the fine-tune's result (not the device or the experiment); the
        switches added after the first release only where they are not their defaults, and
        ``augment`` as the boolean it was, so configs written before them keep their ids."""
        data = self.model_dump(mode="json", exclude={"device", "name"})
        data["augment"] = LEGACY_AUGMENT.get(data["augment"], data["augment"])
        for name in NEW_FIELDS:
            if data[name] == type(self).model_fields[name].default:
                del data[name]
        return data

    @property
    def deacl_id(self) -> str:
        """Hash of ``identity()``."""
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def deacl_data(cfg: DeaclCfg) -> DataCfg:
    """The data config a DeACL fine-tune reads; ConfigError if its linear probe has no classes."""
    infos = DATASETS.get(cfg.data.name).infos
    if "classification" not in infos:
        raise ConfigError(f"data.name: DeACL's linear probe needs a classification task, but data set "
                          f"{cfg.data.name!r} has only {sorted(infos)}")
    return cfg.data.model_copy(update={"task": "classification"})
