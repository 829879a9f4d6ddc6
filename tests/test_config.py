"""Cell config: strict validation with errors that name the field, budgets, cell ids."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ssl_robust.config import CellCfg, HeadCfg, parse_budget
from ssl_robust.config_file import load_config
from tests.helpers import REPO_ROOT

TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"


def validation_error(data: dict[str, Any]) -> tuple[set[str], str]:
    """(dotted locations, full message) of the ValidationError that ``data`` must raise."""
    with pytest.raises(ValidationError) as info:
        CellCfg.model_validate(data)
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}, str(info.value)


# ----------------------------------------------------------------------------- valid configs


def test_tiny_yaml_loads(tiny_encoder_cfg) -> None:
    cfg = load_config(CellCfg, TINY_YAML)
    assert cfg.encoder.name == tiny_encoder_cfg["name"]
    assert cfg.data.resolved_task == "classification"
    assert cfg.attack.name == "pgd" and cfg.attack.eps == pytest.approx(8 / 255)


def test_fraction_budget_parses_to_its_value(cell_data) -> None:
    cfg = CellCfg.model_validate(cell_data({"attack": {"eps": "8/255", "step_size": " 2 / 255 "}}))
    assert cfg.attack.eps == 8 / 255
    assert cfg.attack.step_size == 2 / 255


@pytest.mark.parametrize("value, expected", [("8/255", 8 / 255), ("0", 0.0), ("0.5", 0.5), (1, 1.0),
                                             (0.25, 0.25), ("1e-2", 0.01)])
def test_parse_budget_accepts_numbers_and_fractions(value, expected) -> None:
    assert parse_budget(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["-8/255", -0.1, "8/0", "eight", True, None, [8, 255]])
def test_parse_budget_rejects_negative_and_malformed_values(value) -> None:
    with pytest.raises(ValueError):
        parse_budget(value)


def test_default_step_size_is_two_and_a_half_eps_over_steps(cell_data) -> None:
    cfg = CellCfg.model_validate(cell_data({"attack": {"eps": "10/255", "steps": 5}}))
    assert cfg.attack.resolved_step_size == pytest.approx(2.5 * (10 / 255) / 5)
    zero_steps = CellCfg.model_validate(cell_data({"attack": {"eps": "10/255", "steps": 0}}))
    assert zero_steps.attack.resolved_step_size == pytest.approx(2.5 * 10 / 255)


def test_config_is_immutable(cell_data) -> None:
    cfg = CellCfg.model_validate(cell_data())
    with pytest.raises(ValidationError):
        cfg.attack.eps = 1.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- errors name the field


@pytest.mark.parametrize("updates, field", [
    ({"atack": {"eps": 0.1}}, "atack"),
    ({"attack": {"nmae": "pgd"}}, "attack.nmae"),
    ({"encoder": {"pretraind": False}}, "encoder.pretraind"),
    ({"data": {"n_sample": 3}}, "data.n_sample"),
])
def test_unknown_keys_are_rejected_naming_the_key(cell_data, updates, field: str) -> None:
    locations, _ = validation_error(cell_data(updates))
    assert field in locations


@pytest.mark.parametrize("section, name, field, suggestion", [
    ("encoder", "dinov2_vits41", "encoder.name", "dinov2_vits14"),
    ("attack", "segpdg", "attack.name", "segpgd"),
    ("data", "synthtic", "data.name", "synthetic"),
])
def test_unknown_names_are_rejected_with_near_name_suggestions(cell_data, section, name, field,
                                                               suggestion) -> None:
    updates = {section: {"name": name}}
    if section == "attack":
        updates["data"] = {"task": "segmentation"}
    locations, message = validation_error(cell_data(updates))
    assert field in locations
    assert repr(suggestion) in message


@pytest.mark.parametrize("updates, field", [
    ({"attack": {"eps": -0.1}}, "attack.eps"),
    ({"attack": {"eps": "-8/255"}}, "attack.eps"),
    ({"attack": {"eps": "eight"}}, "attack.eps"),
    ({"attack": {"step_size": -1}}, "attack.step_size"),
    ({"attack": {"steps": -1}}, "attack.steps"),
    ({"attack": {"restarts": 0}}, "attack.restarts"),
    ({"attack": {"norm": "l1"}}, "attack.norm"),
    ({"data": {"task": "detection"}}, "data.task"),
    ({"data": {"n_samples": 0}}, "data.n_samples"),
    ({"head": {"epochs": 0}}, "head.epochs"),
    ({"batch_size": 0}, "batch_size"),
])
def test_out_of_range_values_are_rejected_naming_the_field(cell_data, updates, field: str) -> None:
    locations, _ = validation_error(cell_data(updates))
    assert field in locations


def test_nan_budget_is_rejected(cell_data) -> None:
    locations, _ = validation_error(cell_data({"attack": {"eps": float("nan")}}))
    assert "attack.eps" in locations


@pytest.mark.parametrize("task, attack", [("segmentation", "pgd"), ("classification", "segpgd"),
                                          ("depth", "segpgd"), ("classification", "depthpgd")])
def test_attack_not_applicable_to_task_is_rejected(cell_data, task: str, attack: str) -> None:
    _, message = validation_error(cell_data({"data": {"task": task}, "attack": {"name": attack}}))
    assert "attack.name" in message
    assert repr(task) in message
    assert "'embed'" in message  # the allowed attacks are listed


def test_task_the_dataset_does_not_offer_is_rejected(cell_data) -> None:
    locations, message = validation_error(cell_data({"data": {"name": "cifar10", "task": "depth"}}))
    assert "data.task" in locations
    assert "'depth'" in message


def test_embed_attacks_apply_to_every_task(cell_data) -> None:
    for task in ("classification", "segmentation", "depth"):
        for attack in ("embed", "embed_cos"):
            CellCfg.model_validate(cell_data({"data": {"task": task}, "attack": {"name": attack}}))


# ----------------------------------------------------------------------------- identity


def test_cell_id_is_stable_across_equivalent_spellings(cell_data) -> None:
    as_fraction = CellCfg.model_validate(cell_data({"attack": {"eps": "8/255"}}))
    as_float = CellCfg.model_validate(cell_data({"attack": {"eps": 8 / 255}}))
    reordered = CellCfg.model_validate(dict(reversed(list(cell_data({}).items()))))
    assert as_fraction.cell_id == as_float.cell_id == reordered.cell_id
    assert as_fraction.cell_id == CellCfg.model_validate(as_fraction.model_dump()).cell_id
    assert len(as_fraction.cell_id) == 16 and int(as_fraction.cell_id, 16) >= 0


def test_cell_id_ignores_device_and_head_checkpoint(cell_data, tmp_path: Path) -> None:
    base = CellCfg.model_validate(cell_data())
    moved = CellCfg.model_validate(cell_data({"device": "cuda:1",
                                                         "head": {"checkpoint": str(tmp_path / "h.st")}}))
    assert base.cell_id == moved.cell_id
    assert base.head_id == moved.head_id


@pytest.mark.parametrize("updates", [
    {"attack": {"eps": "4/255"}},
    {"attack": {"steps": 7}},
    {"attack": {"norm": "l2"}},
    {"attack": {"name": "embed"}},
    {"encoder": {"layer": 0}},
    {"encoder": {"checkpoint": "/weights/other.pth"}},
    {"data": {"n_samples": 17}},
    {"seed": 1},
])
def test_cell_id_changes_with_what_defines_the_result(cell_data, updates) -> None:
    assert CellCfg.model_validate(cell_data(updates)).cell_id != \
        CellCfg.model_validate(cell_data()).cell_id


def test_head_id_ignores_the_attack_but_not_the_head(cell_data) -> None:
    base = CellCfg.model_validate(cell_data())
    other_attack = CellCfg.model_validate(cell_data({"attack": {"name": "embed", "eps": "2/255"}}))
    other_head = CellCfg.model_validate(cell_data({"head": {"lr": 0.01}}))
    assert base.head_id == other_attack.head_id
    assert base.head_id != other_head.head_id


def test_validating_a_config_imports_no_heavy_library() -> None:
    """Configs validate shape and names from the light registries only."""
    code = ("import sys; from ssl_robust.config import CellCfg; from ssl_robust.config_file import load_config; "
            "load_config(CellCfg, sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'timm', 'mlflow', 'ray', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(TINY_YAML)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_linf_budget_of_one_or_more_is_refused_with_the_likely_fraction() -> None:
    from ssl_robust.config import AttackCfg

    with pytest.raises(ValueError, match=r"did you mean 8/255"):
        AttackCfg(eps=8)
    assert AttackCfg(eps="8/255").eps == pytest.approx(8 / 255)
    assert AttackCfg(eps=2.0, norm="l2").eps == 2.0  # an L2 radius may exceed 1


def test_the_depth_loss_switch_is_refused_on_other_tasks() -> None:
    with pytest.raises(ValidationError, match=r"head.depth_loss='silog_grad' trains a depth head; 'cifar10' is "
                                              r"evaluated on 'classification'"):
        CellCfg.model_validate({"data": {"name": "cifar10"}, "attack": {"name": "pgd"},
                                "head": {"depth_loss": "silog_grad"}})


@pytest.mark.parametrize("switch", [{"optimizer": "adam"}, {"schedule": "poly"}, {"warmup_steps": 1500},
                                    {"augment": "crop_flip"}])
def test_a_head_recipe_switch_changes_the_head_id_and_its_default_does_not(switch) -> None:
    base = {"data": {"name": "ade20k"}, "attack": {"name": "segpgd"}}
    plain = CellCfg.model_validate(base)
    default = {key: HeadCfg.model_fields[key].default for key in switch}
    assert CellCfg.model_validate({**base, "head": default}).head_id == plain.head_id
    assert CellCfg.model_validate({**base, "head": switch}).head_id != plain.head_id


LOCATION_VALUES = {"device": "cuda:1", "compile": True, "head.checkpoint": "elsewhere/head.safetensors",
                   "head.features": "memory", "data.root": "/mnt/other/data", "data.download": True,
                   "loader.num_workers": 3, "loader.pin_memory": True, "loader.persistent_workers": True}
NEEDS = {"loader.persistent_workers": {"loader.num_workers": 1}}  # a location valid only with another


@pytest.mark.parametrize("field", sorted(LOCATION_VALUES))
def test_where_and_how_a_cell_runs_changes_neither_its_cell_id_nor_its_head_id(cell_data, field: str) -> None:
    from ssl_robust.config import LOCATIONS
    from ssl_robust.config_file import set_dotted

    assert set(LOCATION_VALUES) == set(LOCATIONS)
    base_data = cell_data()
    for key, value in NEEDS.get(field, {}).items():
        set_dotted(base_data, key, value)
    base = CellCfg.model_validate(base_data)
    moved = CellCfg.model_validate(set_dotted(copy.deepcopy(base_data), field, LOCATION_VALUES[field]))
    assert moved.model_dump() != base.model_dump()
    assert (moved.cell_id, moved.head_id) == (base.cell_id, base.head_id)


def test_the_depth_range_is_not_a_head_setting(make_cell_cfg) -> None:
    """One home: the loader, the head and the metrics all read the data set's range."""
    with pytest.raises(ValueError, match="max_depth"):
        make_cell_cfg("depth", head={"max_depth": 20.0})


def test_persistent_workers_without_workers_is_a_config_error() -> None:
    from ssl_robust.config import LoaderCfg
    from ssl_robust.config_file import ConfigError, validate

    with pytest.raises(ConfigError, match="num_workers"):
        validate(LoaderCfg, {"persistent_workers": True}, "loader")


def test_precision_other_than_fp32_changes_the_cell_id_and_fp32_is_left_out_of_it(make_cell_cfg) -> None:
    plain = make_cell_cfg()
    assert make_cell_cfg(precision="bf16").cell_id != plain.cell_id
    assert "precision" not in plain.identity()  # fp32 ids are those of cells logged before the field existed
