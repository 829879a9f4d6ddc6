"""``compile: true``: the cell's scored model and EmbedAttack's representation under torch.compile
give eager's scores, are built once per model, and leave the cell's identity alone.

Accuracies and sample counts must be equal. Float scores (``adv/loss``) may differ by float
rounding: inductor fuses kernels and may order a reduction's additions differently, so
``FLOAT_TOL`` is relative. Compiling on a CPU takes seconds per graph (less with inductor's
on-disk cache warm), so the cells that compile are ``slow``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ssl_robust import compiled as compiled_module
from ssl_robust.cell import run_cell
from ssl_robust.cell_views import views
from ssl_robust.compiled import CompileUnavailable, compiled
from ssl_robust.precision import in_precision
from ssl_robust.sweep_config import expand, parse_sweep
from ssl_robust.tasks import TASKS
from tests.helpers import tiny_sweep

FLOAT_TOL = 1e-5  # relative, for float scores (adv/loss); counts and accuracies are compared exactly
EMBED_EPS = "16/255"  # as tests/test_cell.py: moves a random tiny encoder's task score


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("clean/", "adv/")) or k == "n_samples"}


def _assert_same_scores(eager: dict[str, float], fast: dict[str, float]) -> None:
    eager, fast = _scores(eager), _scores(fast)
    assert eager.keys() == fast.keys()
    for key, value in eager.items():
        if key == "adv/loss":
            assert math.isclose(fast[key], value, rel_tol=FLOAT_TOL, abs_tol=1e-7), (key, value, fast[key])
        else:
            assert fast[key] == value, (key, value, fast[key])


def _eager_and_compiled(make_cell_cfg: Callable[..., Any], **fields: Any) -> tuple[dict, dict]:
    return (run_cell(make_cell_cfg(**fields)), run_cell(make_cell_cfg(**fields, compile=True)))


def test_compile_leaves_the_cell_and_head_ids_alone(make_cell_cfg) -> None:
    plain, fast = make_cell_cfg(), make_cell_cfg(compile=True)
    assert fast.compile and not plain.compile
    assert (fast.cell_id, fast.head_id) == (plain.cell_id, plain.head_id)
    assert "compile" not in plain.identity()


def test_the_report_does_not_tell_compiled_runs_apart() -> None:
    from ssl_robust.report.frame import config_fields

    assert config_fields(["compile", "seed", "batch_size", "attack.steps"]) == ["attack.steps", "batch_size", "seed"]


def test_a_sweeps_defaults_pass_compile_to_every_cell() -> None:
    cells = expand(parse_sweep(tiny_sweep("t", defaults={**tiny_sweep("t")["defaults"], "compile": True})))
    assert cells and all(c.compile for c in cells)
    assert not any(c.compile for c in expand(parse_sweep(tiny_sweep("t"))))


def test_views_compile_each_model_once(monkeypatch: pytest.MonkeyPatch, make_cell_cfg, tiny_encoder) -> None:
    from ssl_robust.heads import LinearClassifier, TaskModel

    built: list[Any] = []
    real = torch.compile

    def spy(fn: Any, **kwargs: Any) -> Any:
        built.append(fn)
        return real(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    model = TaskModel(tiny_encoder, LinearClassifier(tiny_encoder.embed_dim, 4)).eval()
    cfg, task = make_cell_cfg(compile=True), TASKS.get("classification")
    first, second = views(cfg, model, task, (28, 28)), views(cfg, model, task, (28, 28))
    assert len(built) == 2  # the scored model and the representation, once each
    assert first.scored is second.scored is not model  # fp32: the compiled callable itself


@pytest.mark.slow
def test_models_of_many_architectures_in_one_process_stay_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused Ray actor runs cells of several encoders in turn: none may reach Dynamo's recompile
    limit (and run eager) because earlier models' graphs share its count. Dynamo's tracing alone
    (backend "eager") shows it, without inductor's compile time."""
    from torch._dynamo.utils import counters

    from ssl_robust.config import EncoderCfg
    from ssl_robust.encoders import create_encoder
    from ssl_robust.heads import LinearClassifier, TaskModel

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real(fn, backend="eager", **kwargs))
    before = dict(counters["frames"])
    x, device = torch.rand(4, 3, 28, 28), torch.device("cpu")
    for width in range(8, 56, 8):  # six architectures
        encoder = create_encoder(EncoderCfg(name="tiny_dinov2", model_kwargs={"embed_dim": width, "depth": 1}))
        model = TaskModel(encoder, LinearClassifier(width, 4)).eval().requires_grad_(False)
        forward = compiled(model, "scored", model, device)
        for n in (4, 3):
            with torch.no_grad():
                forward(x[:n])
            delta = torch.zeros_like(x[:n], requires_grad=True)
            torch.autograd.grad(forward(x[:n] + delta).sum(), delta)
    frames = {k: v - before.get(k, 0) for k, v in counters["frames"].items()}
    assert frames["total"] >= 6 and frames["ok"] == frames["total"]  # every frame Dynamo saw, compiled


def test_views_without_compile_build_nothing(monkeypatch: pytest.MonkeyPatch, make_cell_cfg, tiny_encoder) -> None:
    from ssl_robust.heads import LinearClassifier, TaskModel

    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled without compile: true"))
    model = TaskModel(tiny_encoder, LinearClassifier(tiny_encoder.embed_dim, 4)).eval()
    assert views(make_cell_cfg(), model, TASKS.get("classification"), (28, 28)).scored is model


def test_no_cpu_compiler_is_a_clear_error_when_building() -> None:
    from torch._inductor import config as inductor_config

    owner = torch.nn.Linear(2, 2)
    with (inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}),
          pytest.raises(CompileUnavailable, match="no C\\+\\+ compiler.*set compile: false")):
        compiled(owner, "scored", owner, torch.device("cpu"))
    assert compiled_module.MEMO not in owner.__dict__ or not owner.__dict__[compiled_module.MEMO]


@pytest.mark.slow
def test_a_compiled_pgd_cell_scores_as_eager(make_cell_cfg, fitted_head: Callable[[str], Path]) -> None:
    eager, fast = _eager_and_compiled(make_cell_cfg, head={"checkpoint": str(fitted_head("classification"))})
    _assert_same_scores(eager, fast)
    assert fast["check/all_passed"] == 1.0


@pytest.mark.slow
def test_a_compiled_embed_attack_cell_scores_as_eager(make_cell_cfg, fitted_head: Callable[[str], Path]) -> None:
    eager, fast = _eager_and_compiled(make_cell_cfg, attack={"name": "embed", "eps": EMBED_EPS},
                                      head={"checkpoint": str(fitted_head("classification"))})
    _assert_same_scores(eager, fast)
    assert fast["check/all_passed"] == 1.0


@pytest.mark.slow
def test_the_input_gradient_through_compile_under_bf16_is_eagers(tiny_encoder) -> None:
    """in_precision's autocast around the compiled encoder: a float32 output and input gradient,
    as eager bf16 gives them (bf16 rounding differs with fusion, so within bf16's resolution)."""
    torch.manual_seed(0)
    x, device = torch.rand(4, 3, 28, 28), torch.device("cpu")
    owner = torch.nn.Module()
    fast = in_precision(compiled(owner, "encoder", tiny_encoder, device), "bf16", device)
    eager = in_precision(tiny_encoder, "bf16", device)
    grads = []
    for forward in (eager, fast):
        delta = torch.zeros_like(x, requires_grad=True)
        out = forward(x + delta)
        (grad,) = torch.autograd.grad(out.square().sum(), delta)
        grads.append((out, grad))
    (out_e, grad_e), (out_c, grad_c) = grads
    assert out_c.dtype == grad_c.dtype == torch.float32
    assert torch.allclose(out_c, out_e, rtol=0.05, atol=0.05)
    assert torch.nn.functional.cosine_similarity(grad_c.flatten(), grad_e.flatten(), dim=0) > 0.99
