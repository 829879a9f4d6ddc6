"""The grid's cost before it runs: FLOPs per forward, gradient steps per cell, hours at a throughput."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ssl_robust import cost
from ssl_robust.cell import run_cell
from ssl_robust.cli import main
from ssl_robust.config import CellCfg, EncoderCfg
from ssl_robust.encoders import ResolvedEncoders, create_encoder, resolve_encoder
from ssl_robust.sweep_config import expand, read_sweep


@pytest.mark.parametrize("name, size", [("vit_small_patch14_dinov2", 56), ("vit_base_patch16_224", 64)])
def test_analytic_forward_flops_match_torchs_flop_counter(name: str, size: int) -> None:
    cfg = EncoderCfg(name=name, pretrained=False, image_size=size, model_kwargs={"depth": 2}, mean=(0.5,) * 3,
                     std=(0.5,) * 3)
    encoder = create_encoder(cfg).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        encoder.features(torch.rand(1, 3, size, size))
    assert cost.forward_gflop(resolve_encoder(cfg)) == pytest.approx(counter.get_total_flops() / 1e9, rel=0.02)


def test_vit_s14_at_224_costs_the_benchmarks_measured_forward() -> None:
    assert cost.forward_gflop(resolve_encoder(EncoderCfg(name="dinov2_vits14", image_size=224))) == pytest.approx(
        12.25, rel=0.01)


def test_the_mlp_ratio_of_the_architecture_enters_the_count() -> None:
    wide, narrow = (resolve_encoder(EncoderCfg(name="vit_small_patch16_224", model_kwargs={"mlp_ratio": ratio}))
                    for ratio in (4.0, 2.0))
    tokens, width = 14 * 14 + 1, 384
    assert (cost.forward_gflop(wide) - cost.forward_gflop(narrow)) * 1e9 == pytest.approx(12 * 8 * tokens * width ** 2)


@pytest.mark.parametrize("steps, restarts", [(3, 1), (2, 2)])
def test_estimated_grad_steps_are_those_a_cell_spends(make_cell_cfg, fitted_head, steps: int,
                                                      restarts: int) -> None:
    cfg = make_cell_cfg(attack={"steps": steps, "restarts": restarts, "stop_when_fooled": False},
                        head={"checkpoint": str(fitted_head("classification"))})
    estimate = cost.cell_cost(cfg, resolve_encoder(cfg.encoder))
    metrics = run_cell(cfg)
    assert estimate.grad_steps == metrics["attack/grad_steps"]
    assert estimate.forwards >= metrics["attack/forward_passes"] + metrics["n_samples"]


def test_eps0_cells_cost_no_gradient_step(make_cell_cfg) -> None:
    cell = make_cell_cfg(attack={"eps": 0})
    assert cost.cell_cost(cell, resolve_encoder(cell.encoder)).grad_steps == 0


def test_sliding_windows_follow_the_data_sets_aspect_ratio() -> None:
    def cell(name: str, **data) -> CellCfg:
        return CellCfg.model_validate({"encoder": {"name": "dinov2_vits14"}, "data": {"name": name, **data},
                                       "attack": {"name": "embed"}})

    assert cost.windows_per_image(cell("cityscapes"), 518) == 3  # 518 x 1036: windows at 0, 345, 518
    assert cost.windows_per_image(cell("ade20k"), 518) == 2
    assert cost.windows_per_image(cell("ade20k", eval="resize"), 518) == 1
    assert cost.windows_per_image(cell("cifar10"), 224) == 1


def test_test_images_are_the_split_or_the_configured_subset() -> None:
    data = CellCfg.model_validate({"data": {"name": "cifar10", "n_samples": None}}).data
    assert cost.split_images(data, "test") == 10_000
    assert cost.split_images(data.model_copy(update={"n_samples": 500}), "test") == 500
    assert cost.split_images(data.model_copy(update={"n_train": None}), "train") == 45_000  # 10 % held out for val


def test_throughput_reads_a_number_or_the_benchmarks_json(tmp_path: Path) -> None:
    assert cost.read_throughput("250") == 250.0
    report = tmp_path / "tp.json"
    report.write_text(json.dumps({"models": {cost.BENCHMARK_MODEL: {"methods": {
        cost.BENCHMARK_METHOD: {"achieved_gflops": 83.7}}}}}))
    assert cost.read_throughput(str(report)) == 83.7
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="achieved_gflops"):
        cost.read_throughput(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="neither a number"):
        cost.read_throughput(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="positive"):
        cost.read_throughput("0")


def test_dry_run_of_the_full_grid_prints_its_totals_and_hours(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "sweeps/full_benchmark.yaml", "--dry-run", "--throughput", "1000"]) == 0
    out = capsys.readouterr().out
    cells = expand(read_sweep(Path("sweeps/full_benchmark.yaml"), []))
    attacks, heads, unknown = cost.grid_cost(cells, ResolvedEncoders(c.encoder for c in cells))
    total = attacks + heads
    assert unknown == 0 and heads.grad_steps == 0 and heads.forwards > 0
    assert f"total: {total.grad_steps:,} sample-gradient-steps, {total.forwards:,} sample-forwards" in out
    hours = float(re.search(r"at 1,000 GFLOP/s sustained: ([\d,.]+) hours", out).group(1).replace(",", ""))
    assert hours == pytest.approx(total.gflop / 1000 / 3600, rel=1e-2)
    assert total.grad_steps > 0 and "grad_steps=0 " in out  # its eps = 0 cells spend none


def test_an_augmented_head_costs_a_train_forward_per_image_and_epoch() -> None:
    data = {"name": "cifar10", "n_train": 1000, "n_val": 100}
    cached = CellCfg.model_validate({"data": data, "head": {"epochs": 5}, "attack": {"name": "pgd"}})
    augmented = CellCfg.model_validate({"data": data, "head": {"epochs": 5, "augment": "crop_flip"},
                                        "attack": {"name": "pgd"}})
    encoder = resolve_encoder(cached.encoder)
    assert cost.head_cost(cached, encoder).forwards == 1000 + 100
    assert cost.head_cost(augmented, encoder).forwards == 5 * 1000 + 100


def test_a_whole_frame_cell_counts_the_tokens_of_its_native_frame() -> None:
    """NYUv2 scored whole: a 480 x 640 frame padded to 35 x 46 patches of 14, not the 37 x 37 of 518²."""
    encoder = EncoderCfg(name="dinov2_vits14", model_kwargs={"dynamic_img_size": True})
    whole = CellCfg(encoder=encoder, data={"name": "nyuv2", "eval": "whole", "n_samples": 1},
                    attack={"name": "depthpgd", "steps": 1})
    resized = CellCfg(encoder=encoder, data={"name": "nyuv2", "eval": "resize", "n_samples": 1},
                      attack={"name": "depthpgd", "steps": 1})
    resolved = resolve_encoder(encoder)
    frame, square = cost.forward_gflop(resolved, (480, 640)), cost.forward_gflop(resolved)
    assert cost.cell_cost(whole, resolved).forwards == cost.cell_cost(resized, resolved).forwards
    assert cost.cell_cost(whole, resolved).gflop / cost.cell_cost(resized, resolved).gflop == pytest.approx(
        frame / square)
    per_block = lambda t: 24 * t * 384 ** 2 + 4 * t ** 2 * 384  # noqa: E731
    assert cost.forward_gflop(resolved, (480, 640)) * 1e9 == pytest.approx(
        12 * per_block(35 * 46 + 1) + 2 * 35 * 46 * 3 * 14 ** 2 * 384)
