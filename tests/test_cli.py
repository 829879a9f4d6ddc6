"""``ssl-robust run``: one cell from a YAML file plus dotted overrides; bad configs exit with code 2."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from ssl_robust import names
from ssl_robust.cli import load_configs, main
from ssl_robust.command_line import LIST_KINDS, build_parser
from ssl_robust.commands import _sweep_exit, resume_command, where_it_went
from ssl_robust.config import CellCfg, EncoderCfg
from ssl_robust.config_file import load_config
from ssl_robust.encoders import create_encoder

from tests.helpers import REPO_ROOT, count_resolutions, tiny_sweep, write_sweep
FAST = ["attack.steps=2", "data.n_train=64", "data.n_val=16", "data.n_samples=8", "head.epochs=3"]


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


def table(stdout: str) -> dict[str, float]:
    """The ``key  value`` lines of the printed metrics table."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and "/" in parts[0]:
            rows[parts[0]] = float(parts[1])
    return rows


def test_run_prints_metrics_table_and_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "configs/tiny.yaml", *FAST]) == 0
    out = capsys.readouterr().out
    cell_id = load_config(CellCfg, "configs/tiny.yaml", FAST).cell_id
    assert out.splitlines()[0].startswith(f"cell {cell_id}:")
    rows = table(out)
    assert {"clean/acc", "adv/acc", "check/all_passed", "attack/max_delta"} <= set(rows)
    assert rows["check/all_passed"] == 1.0
    assert list(rows) == sorted(rows)


def test_run_with_out_dir_writes_per_sample_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "configs/tiny.yaml", *FAST, "data.task=depth", "attack.name=depthpgd",
            "--out-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "clean/rmse" in table(capsys.readouterr().out)
    assert (tmp_path / "out" / "per_sample.csv").read_text().count("\n") == 1 + 8
    assert (tmp_path / "out" / "adv_examples.png").stat().st_size > 0


@pytest.mark.parametrize("override, named", [
    ("attack.eps=-1", "attack.eps"),
    ("attack.nmae=x", "attack.nmae"),
    ("attack.steps=-3", "attack.steps"),
    ("attack.name=segpdg", "segpgd"),
    ("encoder.name=dinov2_vits41", "dinov2_vits14"),
    ("data.name=synthtic", "synthetic"),
    ("data.task=segmentation", "attack.name"),  # pgd does not apply to segmentation
    ("attack.eps", "attack.eps"),  # not key=value
    ("attack.eps=8", "did you mean 8/255"),  # pixel units, not 0-255
])
def test_bad_override_returns_two_and_names_the_field(override: str, named: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "configs/tiny.yaml", override]) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert captured.out == ""


def test_missing_config_file_returns_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_sweep_with_a_missing_data_root_fails_before_ray_starts(tmp_path: Path, tracking_uri: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    sweep = write_sweep(tmp_path / "sweep.yaml", tiny_sweep("preflight", attacks=["pgd"], datasets=[
        "synthetic", {"name": "stl10", "root": str(missing)}]))
    assert main(["sweep", str(sweep), "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err
    assert "'stl10'" in err and str(missing) in err and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()  # the fixture's store


def test_debug_flag_reraises(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="empty.yaml is empty"):
        main(["run", str(tmp_path / "empty.yaml"), "--debug"])


def test_the_resume_hint_on_a_cluster_node_is_the_users_ray_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_ROBUST_SUBMIT", "ray submit infra/cluster.yaml sweeps/full_benchmark.py --")
    monkeypatch.setattr("sys.argv", ["/home/ubuntu/full_benchmark.py", "--config", "sweeps/quickstart.yaml"])
    assert resume_command() == "ray submit infra/cluster.yaml sweeps/full_benchmark.py -- --config sweeps/quickstart.yaml"


def test_the_resume_hint_elsewhere_is_this_processs_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_ROBUST_SUBMIT", raising=False)
    monkeypatch.setattr("sys.orig_argv", ["python", "sweeps/full_benchmark.py", "--config", "my sweep.yaml"])
    assert resume_command() == "python sweeps/full_benchmark.py --config 'my sweep.yaml'"


def test_through_ray_submit_the_exit_code_is_printed(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSL_ROBUST_SUBMIT", "ray submit infra/cluster.yaml sweeps/full_benchmark.py --")
    assert _sweep_exit(ok=True, signum=2) == 130
    err = capsys.readouterr().err
    assert "to resume: ray submit infra/cluster.yaml" in err and "exit code 130" in err
    assert _sweep_exit(ok=False, signum=0) == 1 and "exit code 1" in capsys.readouterr().err
    assert _sweep_exit(ok=True, signum=0) == 0 and capsys.readouterr().err == ""


class _TrainingConfig:
    """A training script's config object in a Lightning checkpoint's hyper_parameters (not weights-only)."""

    def __init__(self) -> None:
        self.epochs = 100


def test_convert_writes_the_encoder_of_a_lightning_checkpoint_as_safetensors(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(1)
    source = create_encoder(EncoderCfg(name="tiny_dino"))
    state = {f"backbone.encoder.{k}": v for k, v in source.model.state_dict().items()}
    ckpt, out = tmp_path / "deacl-ep=100.ckpt", tmp_path / "student.safetensors"
    torch.save({"state_dict": state, "epoch": 99, "global_step": 100, "pytorch-lightning_version": "1.9.5",
                "hyper_parameters": {"args": argparse.Namespace(lr=0.05), "cfg": _TrainingConfig()}}, ckpt)

    assert main(["convert", str(ckpt), str(out), "--encoder", "tiny_dino"]) == 0
    printed = capsys.readouterr().out
    assert f"prefix 'backbone.encoder.' (found): {len(state)} tensors written to {out}" in printed
    assert "checked: it loads into tiny_dino" in printed
    loaded = create_encoder(EncoderCfg(name="tiny_dino", checkpoint=str(out)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.features(x)[0], source.features(x)[0])
        assert torch.equal(loaded.features(x)[1], source.features(x)[1])

    assert main(["convert", str(ckpt), str(out), "--key", "backbone.encoder"]) == 0
    assert "prefix 'backbone.encoder.' (given)" in capsys.readouterr().out
    assert main(["convert", str(ckpt), str(out), "--key", "encoder."]) == 2
    assert "'backbone.encoder.cls_token'" in capsys.readouterr().err
    assert main(["convert", str(ckpt), str(tmp_path / "student.pt")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err


@pytest.mark.parametrize("command, config, belongs", [
    ("run", "sweeps/quickstart.yaml", "sweep"), ("sweep", "configs/tiny.yaml", "run"),
    ("run", "configs/deacl_tiny.yaml", "deacl"), ("sweep", "sweeps/deacl_quickstart.yaml", "deacl-sweep"),
    ("deacl-sweep", "sweeps/deacl_search_quickstart.yaml", "search"),
])
def test_a_config_given_to_the_wrong_command_names_the_right_one(command: str, config: str, belongs: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, str(REPO_ROOT / config)]) == 2
    err = capsys.readouterr().err
    assert f"run it with `ssl-robust {belongs} " in err and err.count("\n") <= 2


def test_list_prints_one_line_per_name_configs_accept(capsys: pytest.CaptureFixture[str]) -> None:
    from ssl_robust.attacks import ATTACKS
    from ssl_robust.data.catalog import DATASETS

    assert main(["list", "attacks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ATTACKS.names()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{section}:" in out for section in ("encoders", "datasets", "attacks", "tasks"))
    assert all(f"  {name} " in out for name in DATASETS.names())


def test_a_sweep_ends_saying_where_each_result_is_and_how_to_open_it(tmp_path: Path) -> None:
    lines = where_it_went(tmp_path / "report", "sqlite:////data/mlflow.db", "/runs/ray", "7")
    assert lines[0].startswith(f"report:      {tmp_path / 'report' / 'index.html'}")
    assert lines[1] == ("tracking:    sqlite:////data/mlflow.db  (mlflow ui --backend-store-uri sqlite:////data/mlflow.db "
                        "--port 5000, then open http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning)")
    assert lines[2] == "Ray results: /runs/ray  (tensorboard --logdir /runs/ray)"
    server = where_it_went(None, "http://user:s3cret@mlflow.internal:5000", None, "3")
    assert len(server) == 1 and "s3cret" not in server[0]
    assert server[0].endswith("(open http://***@mlflow.internal:5000/#/experiments/3?workflowType=machine_learning)")


def test_the_deacl_poster_dry_run_lists_the_posters_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deacl-sweep", str(REPO_ROOT / "sweeps" / "deacl_poster.yaml"), "--dry-run"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    for setting in ("dino_vitb16 imagenet", "eps=4/255", "sgd lr=0.05", "momentum=0.0", "weight_decay=0.0",
                    "batch=128x4", "warmup=10 from 0.003 per epoch", "augment=seed", "precision=fp16",
                    "val_fraction=0.0", "epochs=101"):
        assert setting in line, setting


def test_the_list_commands_kinds_are_the_listed_registries() -> None:
    assert LIST_KINDS == sorted(names.LISTS)


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["run", "configs/tiny.yaml", "attack.epz=1"],
                                  ["sweep", "sweeps/quickstart.yaml", "defaults.heed=1"]])
def test_help_and_config_errors_load_no_torch_ray_or_mlflow(argv: list[str]) -> None:
    code = ("import sys; from ssl_robust.cli import main\n"
            "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as end:\n    code = end.code\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'mlflow', 'timm') if m in sys.modules)\n"
            "print('HEAVY', heavy, code)")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip().splitlines()[-1] in ("HEAVY [] 0", "HEAVY [] 2"), done.stdout + done.stderr


CONFIG_OF = {"run": "configs/tiny.yaml", "deacl": "configs/deacl_tiny.yaml"}


@pytest.mark.parametrize("command", ["run", "deacl", "sweep", "deacl-sweep", "search"])
def test_the_override_example_of_each_commands_help_is_a_valid_override(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    help_text = next(a.help for a in sub._actions if a.dest == "overrides")
    example = help_text.split("e.g. ", 1)[1].split()
    assert example and all("=" in item for item in example)
    argv = [command, *([str(REPO_ROOT / CONFIG_OF[command])] if command in CONFIG_OF else []), *example]
    args, extra = parser.parse_known_args(argv)
    args.overrides = [*getattr(args, "overrides", []), *extra]
    if command not in CONFIG_OF:
        args.overrides = [str(REPO_ROOT / args.default_config), *args.overrides]
    assert load_configs(args) is not None  # validated with the override applied


def count_reads(monkeypatch: pytest.MonkeyPatch, path: str) -> list[Path]:
    """Every read of the file ``path`` (by any reader: the config loader, the data preflight...)."""
    reads: list[Path] = []
    original = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        if self.resolve() == (REPO_ROOT / path).resolve():
            reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


@pytest.mark.parametrize("argv", [
    ["sweep", "sweeps/quickstart.yaml", "--dry-run"],
    ["deacl-sweep", "sweeps/deacl_quickstart.yaml", "--dry-run"],
    ["search", "sweeps/deacl_search_quickstart.yaml", "--dry-run"],
    ["run", "configs/tiny.yaml", *FAST],
], ids=["sweep", "deacl-sweep", "search", "run"])
def test_a_command_reads_its_config_file_once(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    reads = count_reads(monkeypatch, argv[1])
    assert main(argv) == 0
    assert len(reads) == 1


TINY_DINOV2, TINY_DINO = "vit_small_patch14_dinov2", "vit_base_patch16_224"  # aliases.py's test encoders


@pytest.mark.parametrize("argv, timm_names", [
    (["sweep", "sweeps/quickstart.yaml", "--dry-run", "--gpu-memory", "80GiB"], [TINY_DINOV2, TINY_DINO]),
    (["deacl-sweep", "sweeps/deacl_quickstart.yaml", "--dry-run"], [TINY_DINOV2]),
    (["search", "sweeps/deacl_search_quickstart.yaml", "--dry-run"], [TINY_DINOV2]),
    (["run", "configs/tiny.yaml", *FAST], [TINY_DINOV2]),
], ids=["sweep", "deacl-sweep", "search", "run"])
def test_a_command_resolves_each_encoder_once(argv: list[str], timm_names: list[str],
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Checking the name, the plan's costs and memory, the data's input size and building the model
    all read one resolution per distinct encoder."""
    resolutions = count_resolutions(monkeypatch)
    assert main(argv) == 0
    assert resolutions == timm_names
