"""DeACL fine-tuning configs (``ssl_robust.deacl_config``): bad fields and switches named, the old
boolean ``augment`` switch read, and the ids of configs written before the new switches kept."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from ssl_robust.deacl_config import NEW_FIELDS, DeaclCfg
from tests.helpers import deacl_cfg


@pytest.mark.parametrize("updates, field", [
    ({"gamma": -1.0}, "gamma"),
    ({"data": {"name": "imagenet_typo"}}, "data.name"),
    ({"attack": {"eps": "abc"}}, "attack.eps"),
    ({"augment": "crop"}, "augment"),
    ({"warmup_unit": "epochs"}, "warmup_unit"),
    ({"warmup_start_lr": -0.1}, "warmup_start_lr"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"momentum": 1.0}, "momentum"),
    ({"precision": "fp8"}, "precision"),
])
def test_bad_config_fails_naming_the_field(updates: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        deacl_cfg(**updates)
    assert field in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert field in str(info.value)


@pytest.mark.parametrize("updates, allowed", [
    ({"augment": "crop"}, "'rrc', 'seed' or 'none'"),
    ({"warmup_unit": "epochs"}, "'step' or 'epoch'"),
    ({"precision": "fp8"}, "'fp32', 'bf16' or 'fp16'"),
])
def test_a_bad_switch_lists_the_allowed_values(updates: dict[str, Any], allowed: str) -> None:
    with pytest.raises(ValidationError, match=allowed):
        deacl_cfg(**updates)


def test_augment_reads_the_old_boolean_switch() -> None:
    assert deacl_cfg(augment=True).augment == "rrc" and deacl_cfg(augment=False).augment == "none"


def test_configs_without_the_new_switches_keep_their_deacl_id() -> None:
    """The id of such a config is the hash of exactly the fields that existed before them."""
    for cfg in (DeaclCfg(), deacl_cfg(), deacl_cfg(augment=False)):
        old = cfg.model_dump(mode="json", exclude={"device", "name", *NEW_FIELDS})
        old["augment"] = cfg.augment == "rrc"
        blob = json.dumps(old, sort_keys=True)
        assert cfg.deacl_id == hashlib.sha256(blob.encode()).hexdigest()[:16]
    ids = {deacl_cfg(**u).deacl_id for u in ({}, {"augment": "seed"}, {"warmup_unit": "epoch"},
                                             {"warmup_start_lr": 0.003}, {"val_fraction": 0})}
    assert len(ids) == 5
