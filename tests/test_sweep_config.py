"""Sweep config validation and grid expansion (pure: no Ray, no MLflow)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ssl_robust.cli import main
from ssl_robust.config_file import ConfigError, load_config, read_config, validate
from ssl_robust.sweep_config import (DeaclSweepCfg, SweepCfg, benchmark_sweep, deacl_configs, expand, head_groups,
                                     load_sweep, parse_sweep, with_students)
from tests.helpers import REPO_ROOT, tiny_sweep, write_sweep


def test_tiny_grid_is_encoders_x_attacks_x_eps() -> None:
    cells = expand(parse_sweep(tiny_sweep("t")))
    assert len(cells) == 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == 8
    assert len(head_groups(cells)) == 2  # one head per (encoder, data set)
    assert {c.attack.eps for c in cells} == {0.0, 8 / 255}
    assert all(c.data.n_samples == 16 and c.attack.steps == 3 for c in cells)


def test_attacks_that_do_not_fit_a_task_are_skipped() -> None:
    datasets = [{"name": "synthetic", "task": t} for t in ("classification", "segmentation", "depth")]
    sweep = parse_sweep(tiny_sweep("t", datasets=datasets, encoders=tiny_sweep("t")["encoders"][:1],
                                   attacks=["embed", "pgd", "segpgd", "depthpgd"], eps=[0]))
    pairs = {(c.data.task, c.attack.name) for c in expand(sweep)}
    assert pairs == {("classification", "embed"), ("classification", "pgd"),
                     ("segmentation", "embed"), ("segmentation", "segpgd"),
                     ("depth", "embed"), ("depth", "depthpgd")}


def test_fixed_fields_reach_every_cell(tmp_path: Path) -> None:
    data = tiny_sweep("t", data_root=str(tmp_path), defaults={"seed": 3, "batch_size": 8, "head": {"epochs": 2},
                                                              "data": {"n_samples": 16}},
                      datasets=[{"name": "synthetic", "task": "depth", "n_samples": 4}], attacks=["embed"])
    cells = expand(parse_sweep(data))
    assert all(c.seed == 3 and c.batch_size == 8 and c.head.epochs == 2 for c in cells)
    assert all(c.data.root == tmp_path / "synthetic" for c in cells)
    assert all(c.data.n_samples == 4 for c in cells)  # a data set's own value wins


def test_a_data_sets_own_head_fields_win_over_the_defaults_for_its_cells_only() -> None:
    datasets = [{"name": "synthetic", "task": "classification", "head": {"optimizer": "adam", "lr": 0.5}},
                {"name": "synthetic", "task": "segmentation"}]
    data = tiny_sweep("t", datasets=datasets, attacks=["embed"], eps=[0],
                      defaults={"head": {"epochs": 2, "lr": 0.01}, "device": "cpu"})
    heads = {c.data.resolved_task: c.head for c in expand(parse_sweep(data))}
    assert (heads["classification"].optimizer, heads["classification"].lr, heads["classification"].epochs) == (
        "adam", 0.5, 2)
    assert (heads["segmentation"].optimizer, heads["segmentation"].lr) == ("adamw", 0.01)


def test_a_tasks_head_recipe_applies_to_its_data_sets_under_their_own_head_fields() -> None:
    datasets = [{"name": "synthetic", "task": "classification"},
                {"name": "synthetic", "task": "depth", "n_samples": 4, "head": {"epochs": 7}},
                {"name": "synthetic", "task": "segmentation"}]
    data = tiny_sweep("t", datasets=datasets, attacks=["embed"], eps=[0],
                      heads={"depth": {"depth_loss": "silog_grad", "epochs": 3, "lr": 0.1}})
    heads = {c.data.resolved_task: c.head for c in expand(parse_sweep(data))}
    assert (heads["depth"].depth_loss, heads["depth"].epochs, heads["depth"].lr) == ("silog_grad", 7, 0.1)
    assert heads["classification"].depth_loss == "silog" and heads["segmentation"].epochs == 2  # defaults.head


def test_a_head_recipe_for_an_unknown_task_names_the_tasks() -> None:
    with pytest.raises(ConfigError, match=r"heads.detection.\[key\]: .*unknown task 'detection'; allowed: "):
        parse_sweep(tiny_sweep("t", heads={"detection": {"epochs": 1}}))


def test_a_data_sets_head_may_not_name_a_checkpoint() -> None:
    datasets = [{"name": "synthetic", "head": {"checkpoint": "h.safetensors"}}]
    with pytest.raises(ConfigError, match=r"datasets.0.head.checkpoint: a sweep fits its own heads"):
        parse_sweep(tiny_sweep("t", datasets=datasets))


def test_disabled_encoders_and_duplicates_are_left_out() -> None:
    encoders = [*tiny_sweep("t")["encoders"], {"name": "tiny_dinov2", "checkpoint": "s3://b/k", "enabled": False}]
    cells = expand(parse_sweep(tiny_sweep("t", encoders=encoders, eps=[0, 0.0, "0/255"])))
    assert len(cells) == 2 * 2 * 1
    assert all(c.encoder.checkpoint is None for c in cells)


def test_shipped_sweeps_validate() -> None:
    sweep, cells = load_sweep(REPO_ROOT / "sweeps" / "full_benchmark.yaml")
    assert len(cells) == 3 * 7 * 4 * 6  # encoders x data sets x (embed, noise, task attack, standard) x eps
    assert len(head_groups(cells)) == 3 * 7
    assert sorted({round(c.attack.eps * 255, 6) for c in cells}) == [0, 1, 2, 4, 8, 16]
    deacl = [e for e in sweep.encoders if e.deacl]
    assert deacl and not deacl[0].enabled and deacl[0].deacl.experiment == "deacl"
    quick, quick_cells = load_sweep(REPO_ROOT / "sweeps" / "quickstart.yaml")
    assert {c.data.resolved_task for c in quick_cells} == {"classification", "segmentation", "depth"}
    assert {c.attack.name for c in quick_cells} == {"embed", "noise", "pgd", "segpgd", "depthpgd", "standard"}
    assert {c.attack.steps for c in cells if c.attack.name == "standard"} == {100}
    assert all(not c.encoder.pretrained for c in quick_cells)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"attacks": ["embed", "pgdd"]}, ["attacks.1.name", "'pgd'", "Known:"]),
        ({"encoders": ["dinov2_vits15"]}, ["encoders.0.name", "'dinov2_vits14'"]),
        ({"datasets": [{"name": "synthetic", "task": "detection"}]},
         ["datasets.0.task", "'detection'", "allowed: ['classification', 'depth', 'segmentation']"]),
        ({"resources": {"gpus": 1}}, ["resources.gpus", "allowed: ['cpu', 'gpu']"]),
        ({"defaults": {"head": {"epoch": 3}}}, ["defaults.head.epoch", "'epochs'"]),
        ({"defaults": {"seed": "x"}}, ["defaults.seed"]),
        ({"seed": 1}, ["seed: Extra inputs", "'defaults'"]),
        ({"attacks": [{"name": "pgd", "eps": 0.1}]}, ["attacks.0", "sweep axis"]),
        ({"eps": ["8/two"]}, ["eps.0", "8/255"]),
        ({"attacks": ["segpgd"]}, ["datasets.0", "allowed for classification", "'pgd'"]),
        ({"defaults": {"head": {"checkpoint": "x.safetensors"}}}, ["defaults.head.checkpoint"]),
        ({"eps": []}, ["eps:"]),
    ],
)
def test_bad_configs_name_the_field(change: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_sweep(tiny_sweep("t", **change), "bad.yaml")
    message = str(err.value)
    assert message.startswith("bad.yaml: ")
    for part in expected:
        assert part in message


def test_bad_config_fails_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import ray

    path = write_sweep(tmp_path / "bad.yaml", tiny_sweep("bad", attacks=["embed", "pgdd"]))
    assert main(["sweep", "--config", str(path), "--address", "local"]) == 2
    assert not ray.is_initialized()
    err = capsys.readouterr().err
    assert "attacks.1.name" in err and "Did you mean 'pgd'" in err


def test_dry_run_lists_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_sweep(tmp_path / "ok.yaml", tiny_sweep("ok"))
    assert main(["sweep", str(path), "--dry-run", "defaults.seed=1"]) == 0
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if "grad_steps=" in line]
    assert len(lines) == 8 and all("synthetic classification" in line for line in lines)


# ----------------------------------------------------------------------------- DeACL sources and sweeps


def test_a_deacl_entry_stands_for_the_students_it_finds() -> None:
    sweep = parse_sweep(tiny_sweep("t", encoders=[{"deacl": {"runs": ["abc"], "epochs": [0, 2]}}]))
    with pytest.raises(ConfigError, match="by their students first"):
        expand(sweep)
    students = [{"name": "tiny_dinov2"}, {"name": "tiny_dinov2", "checkpoint": "runs:/abc/checkpoints/epoch_002.safetensors"}]
    cells = expand(with_students(sweep, lambda source: students if source.epochs == [0, 2] else []))
    assert {c.encoder.checkpoint for c in cells} == {None, students[1]["checkpoint"]}


@pytest.mark.parametrize(("entry", "expected"), [
    ({"deacl": {"epochs": [1]}}, "exactly one of `runs`"),
    ({"deacl": {"runs": ["a"], "experiment": "e", "epochs": [1]}}, "exactly one of `runs`"),
    ({"name": "tiny_dino", "deacl": {"runs": ["a"], "epochs": [1]}}, "remove ['name']"),
    ({"deacl": {"runs": ["a"], "epochs": []}}, "encoders.0.deacl.epochs"),
])
def test_bad_deacl_entries_name_the_field(entry: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_sweep(tiny_sweep("t", encoders=[entry]))


def test_a_missing_deacl_run_fails_naming_the_entry() -> None:
    sweep = parse_sweep(tiny_sweep("t", encoders=["tiny_dino", {"deacl": {"experiment": "none", "epochs": [1]}}]))

    def nothing(source: Any) -> list:
        raise LookupError("no FINISHED DeACL run in experiment 'none'")

    with pytest.raises(ConfigError, match=r"encoders\.1\.deacl: no FINISHED"):
        with_students(sweep, nothing)


def test_deacl_sweep_grid_gives_one_fine_tune_per_point_with_the_sweeps_name() -> None:
    sweep = load_config(DeaclSweepCfg, REPO_ROOT / "sweeps" / "deacl_quickstart.yaml",
                        ["grid.dense_weight=[0, 1]"])
    configs = deacl_configs(sweep)
    assert [(c.gamma, c.dense_weight) for c in configs] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert {c.name for c in configs} == {"deacl_quickstart"} and len({c.deacl_id for c in configs}) == 4
    bench = benchmark_sweep(sweep, ["r1", "r2"])
    assert bench.encoders[0].deacl.runs == ["r1", "r2"] and bench.encoders[0].deacl.epochs == [0, 1, 2]


@pytest.mark.parametrize(("override", "expected"), [
    ("grid.gamma=[-1]", "gamma"),
    ("grid.lrr=[0.1]", "lrr"),
    ("benchmark.epochs=[0,5]", "benchmark.epochs [5]"),
])
def test_bad_deacl_sweeps_fail_before_anything_runs(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(DeaclSweepCfg, REPO_ROOT / "sweeps" / "deacl_quickstart.yaml", [override])


def test_a_grid_value_of_the_wrong_type_names_the_grid_point_and_field() -> None:
    data = read_config(REPO_ROOT / "sweeps" / "deacl_quickstart.yaml")
    data["grid"] = {"attack.eps": ["8/255", "abc"]}
    with pytest.raises(ConfigError, match=r"grid point \{'attack.eps': 'abc'\}: attack.eps"):
        validate(DeaclSweepCfg, data, "x.yaml")


def test_shipped_deacl_sweeps_validate() -> None:
    poster = load_config(DeaclSweepCfg, REPO_ROOT / "sweeps" / "deacl.yaml")
    assert [c.gamma for c in deacl_configs(poster)] == [1, 2, 4]
    assert poster.deacl.encoder.name == "dino_vitb16" and poster.benchmark.epochs == [0, 25, 50, 75, 101]


def test_the_poster_preset_expands_to_the_posters_protocol(capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", str(REPO_ROOT / "sweeps" / "poster.yaml"), "--dry-run"]) == 0
    listed = [line for line in capsys.readouterr().out.strip().splitlines() if "grad_steps=" in line]
    sweep, cells = load_sweep(REPO_ROOT / "sweeps" / "poster.yaml")
    assert len(listed) == len(cells) == 3 * 7 * 4 * 4
    assert {(c.encoder.name, c.encoder.image_size) for c in cells} == {
        ("dino_vitb16", 224), ("dinov2_vits14", 518), ("dinov2_vitb14", 518)}
    assert all(c.attack.steps == (100 if c.attack.name == "standard" else 20) for c in cells)
    assert all(c.attack.step_size == pytest.approx(2 / 255) for c in cells)
    assert all(c.attack.select == "final" and c.attack.norm == "linf" for c in cells)
    assert all(c.attack.stop_when_fooled == (c.attack.name == "standard") for c in cells)  # the suite's cascade
    assert any(abs(c.attack.eps - 8 / 255) < 1e-9 for c in cells)
    sizes = {c.data.resolved_task: set() for c in cells}
    for c in cells:
        sizes[c.data.resolved_task].add(c.data.n_samples)
    assert sizes == {"classification": {1024}, "segmentation": {None}, "depth": {None}}
    by_task = {task: {(c.data.eval, str(c.data.slide_stride), c.data.slide_average) for c in cells
                      if c.data.resolved_task == task} for task in sizes}
    assert by_task == {"classification": {(None, "None", "logits")},
                       "segmentation": {(None, "{224: 100, 518: 341}", "probs")},  # slide, the seed's strides
                       "depth": {("whole", "None", "logits")}}
    assert {c.data.name for c in cells if c.data.voc_background == "exclude"} == {"voc2012"}
    assert all(c.encoder.model_kwargs == {"dynamic_img_size": True} for c in cells)
    assert [e.deacl.experiment for e in sweep.encoders if e.deacl] == ["deacl_poster"]


def test_the_three_main_sweeps_run_the_noise_baseline_and_the_standard_suite() -> None:
    for name in ("full_benchmark.yaml", "poster.yaml"):
        _, cells = load_sweep(REPO_ROOT / "sweeps" / name)
        for task in ("classification", "segmentation", "depth"):
            assert {"noise", "standard"} <= {c.attack.name for c in cells if c.data.resolved_task == task}, name
    deacl = load_config(DeaclSweepCfg, REPO_ROOT / "sweeps" / "deacl.yaml")
    assert {"noise", "standard"} <= {a.name for a in deacl.benchmark.attacks}


def test_an_attack_entry_with_its_own_steps_runs_at_those_steps_only() -> None:
    data = {"name": "t", "encoders": ["tiny_dinov2"], "datasets": ["synthetic"], "eps": [0.1], "steps": [3, 5],
            "attacks": ["pgd", {"name": "standard", "steps": 50}]}
    cells = expand(validate(SweepCfg, data, "test"))
    assert sorted((c.attack.name, c.attack.steps) for c in cells) == [("pgd", 3), ("pgd", 5), ("standard", 50)]
