"""``compile: true``: a cell's scored model and EmbedAttack's representation under ``torch.compile``.

Built once per model. ``compiled(owner, role, fn, device)`` keeps what it builds on the owner
model itself (the memo ``owner._ssl_robust_compiled``, a dict keyed by role), so ``cell_views.views``,
which runs per batch, gets the same compiled callable on every batch, and the memo goes with the
model. Dynamo keeps compiled graphs and their recompile count per code object, and models of
one class share theirs (``TaskModel.forward``). So each compiled callable traces from a function
with a code object of its own. A process that runs cells of several architectures in turn (a
Ray actor reused for trials) then does not reach torch's recompile limit, which would run the
later cells in eager. Inductor's on-disk cache still serves a graph compiled before.

Shapes: ``dynamic=None``, torch's automatic dynamic shapes. The first call compiles for its
exact shapes (a dimension torch has already seen vary in this process starts symbolic). The
first call with another size in some dimension compiles once more, with that dimension
symbolic. The attack's batch shrinks as samples are fooled (the cascade,
``attack.stop_when_fooled``), and a split's last batch is smaller, so the batch dimension turns
symbolic after one recompile. The image size stays static where it is fixed (resized inputs,
``slide`` windows) and turns symbolic under ``whole`` (native sizes). ``dynamic=False`` would
compile again for every batch size, up to torch's recompile limit. ``dynamic=True`` would make
the image size symbolic from the start, with less specialised kernels.

Mode: torch's default. ``reduce-overhead`` (CUDA graphs) records a graph per shape and reuses
its output buffers at the next replay, while the attack keeps earlier outputs (the best
iterate's). ``max-autotune`` adds kernel benchmarking to every compile, a cost each cell pays.

Composition: ``precision.in_precision`` wraps the compiled callable. Dynamo traces under the
active autocast state and guards on it, so fp32 and bf16 calls get their own graphs. The
gradient with respect to the input (``torch.autograd.grad`` of the attack's loss w.r.t. delta)
flows through the AOTAutograd backward graph. Calls with and without grad get separate graphs.

Availability is checked when a compiled callable is built, on the cell's first batch and before
it attacks. Dynamo must support this Python. A CPU needs a working C++ compiler (inductor's
``cpp.cxx``), and CUDA needs Triton. If one is missing, ``CompileUnavailable`` names it and
``compile: false``. Nothing falls back to eager silently: Dynamo's errors are not suppressed,
and a model inductor cannot compile raises at its first call. Graph breaks run the code between
graphs in eager Python, with the same results. A function that passes torch's recompile limit
(``torch._dynamo.config.recompile_limit``) runs eager from then on, and torch logs a warning.
"""
from __future__ import annotations

import types
from collections.abc import Callable, Hashable

import torch
from torch import nn

MEMO = "_ssl_robust_compiled"  # the owner model's attribute: role -> compiled callable


class CompileUnavailable(RuntimeError):
    """``compile: true`` on a platform where torch.compile cannot build code for the device."""


def _missing(device: torch.device) -> str | None:
    """What torch.compile lacks on ``device``, or None when it has what it needs."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python or platform"
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler as err:
            return f"inductor finds no C++ compiler for CPU code ({err}); install g++ or set CXX"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton for CUDA code and it is not installed (pip install triton)"
    return None


def check_available(device: torch.device) -> None:
    """Raise CompileUnavailable naming what torch.compile lacks on ``device``."""
    missing = _missing(device)
    if missing is not None:
        raise CompileUnavailable(f"compile: true, but torch.compile cannot run on {device.type} here: {missing}; "
                                 f"set compile: false")


def _own_code(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` called from a function whose code object is new, so Dynamo gives it its own cache."""
    def call(x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    code = call.__code__.replace(co_varnames=call.__code__.co_varnames)  # a copy, as torch's own wrap_inline
    return types.FunctionType(code, call.__globals__, call.__name__, None, call.__closure__)


def compiled(owner: nn.Module, role: Hashable, fn: Callable[[torch.Tensor], torch.Tensor],
             device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` under ``torch.compile(dynamic=None)``, built on the first call for (``owner``,
    ``role``) and returned as it is on every later call (a later ``fn`` must compute the same thing:
    it is not compiled again). Raises CompileUnavailable when ``device`` cannot compile."""
    memo = owner.__dict__.setdefault(MEMO, {})
    if role not in memo:
        check_available(device)
        memo[role] = torch.compile(_own_code(fn), dynamic=None)
    return memo[role]
