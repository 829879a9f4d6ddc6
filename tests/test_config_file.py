"""Config files: read once with clear errors, overrides through one dotted setter, the command's
kind checked, validated."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_robust.config import CellCfg
from ssl_robust.config_file import ConfigError, apply_overrides, load_config, load_yaml, read_config, set_dotted
from tests.helpers import REPO_ROOT

TINY_YAML = REPO_ROOT / "configs" / "tiny.yaml"


def test_overrides_apply_dotted_keys_with_yaml_values() -> None:
    cfg = load_config(CellCfg, TINY_YAML, ["attack.eps=4/255", "attack.steps=3", "data.task=segmentation",
                                    "attack.name=segpgd", "encoder.layer=0"])
    assert cfg.attack.eps == 4 / 255
    assert cfg.attack.steps == 3
    assert cfg.data.resolved_task == "segmentation"
    assert cfg.attack.name == "segpgd"
    assert cfg.encoder.layer == 0

def test_override_creates_missing_sections() -> None:
    assert apply_overrides({}, ["head.epochs=2"]) == {"head": {"epochs": 2}}

@pytest.mark.parametrize("override", ["attack.eps", "seed.value=1"])
def test_malformed_override_raises_value_error(override: str) -> None:
    with pytest.raises(ValueError):
        apply_overrides({"seed": 0, "attack": {}}, [override])

def test_one_dotted_setter_makes_sections_and_refuses_to_descend_into_a_value() -> None:
    assert set_dotted({"attack": {"eps": 1}}, "attack.norm", "l2") == {"attack": {"eps": 1, "norm": "l2"}}
    assert set_dotted({}, "head.recipe.lr", 0.1) == {"head": {"recipe": {"lr": 0.1}}}
    with pytest.raises(ValueError, match="'attack.eps.x': 'eps' is not a section"):
        set_dotted({"attack": {"eps": 1}}, "attack.eps.x", 2)


def test_a_yaml_syntax_error_names_the_file_and_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack:\n  eps: [8/255\n")
    with pytest.raises(ConfigError, match=rf"{bad}:\d+:\d+: invalid YAML"):
        load_yaml(bad)


@pytest.mark.parametrize("text, message", [("", "is empty"), ("- a\n- b\n", "expected a mapping at the top level")])
def test_an_empty_file_or_a_list_is_not_a_config(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(path)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_yaml(tmp_path / "nowhere.yaml")


def test_a_config_of_another_command_names_the_command_that_reads_it() -> None:
    with pytest.raises(ConfigError, match=r"a sweep config .* run it with `ssl-robust sweep"):
        read_config(REPO_ROOT / "sweeps" / "quickstart.yaml", [], "run")
