"""Checkpoint files read as data: safetensors, weights-only torch files and Lightning ``.ckpt``s.

``torch.load(weights_only=True)`` refuses a PyTorch Lightning checkpoint whose
``hyper_parameters``, callbacks or scheduler states hold a class it does not know (an omegaconf
``DictConfig``, a project's config object). Such a file is read again by the same weights-only
unpickler with each unknown global mapped to an inert ``Placeholder``: nothing the file names is
imported or called, tensors load as usual, and every other object only keeps its pickled arguments.
Globals that exist to run code or open files (``os.system``, ``builtins.eval``,
``subprocess.Popen``, ``io.open`` ...) are refused outright: no checkpoint needs them.

The encoder's tensors sit under a key prefix (``backbone.encoder.`` in the DeACL release,
``backbone.`` in DINO's teacher); ``backbone_tensors`` takes the prefix given or finds it from
the model's own key names.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import os
import pickle
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssl_robust.errors import CheckpointError

_STATE_DICT_KEYS = ("teacher", "student", "model", "state_dict", "module")
_HEAD_PREFIXES = ("head.", "dino_head", "ibot_head")
_HARMLESS = [argparse.Namespace]  # DINO saves its args alongside the weights
_ACTING_MODULES = frozenset({"os", "posix", "nt", "sys", "subprocess", "importlib", "runpy", "shutil", "socket",
                             "ctypes", "pty", "code", "codeop", "pickle", "_pickle", "marshal", "webbrowser", "io",
                             "_io", "tempfile"})
_ACTING_BUILTINS = frozenset({"eval", "exec", "compile", "open", "__import__", "breakpoint", "input"})
VIT_KEYS = frozenset({"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                      "norm.bias", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"})


class Placeholder:
    """Inert stand-in for a class or function a checkpoint names: keeps its pickled arguments and
    state, runs nothing (subclassed once per name, ``pickled_name``)."""

    pickled_name = ""

    def __new__(cls, *args: Any) -> "Placeholder":
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _placeholder_type(name: str) -> type[Placeholder]:
    return type("Placeholder", (Placeholder,), {"pickled_name": name, "__qualname__": f"Placeholder[{name}]"})


def acts(name: str) -> bool:
    """Whether a pickled global (``module.name``, Python 2 spellings too, as ``pickle`` maps them)
    is one whose only use in a pickle is to run code or open files."""
    module, _, attr = name.rpartition(".")
    top = module.split(".")[0]
    top = _compat_pickle.IMPORT_MAPPING.get(top, top).split(".")[0]
    return top in _ACTING_MODULES or (top == "builtins" and attr in _ACTING_BUILTINS)


def _load_reason(err: BaseException) -> str:
    """The cause in torch's or safetensors' message, without torch's advice to drop ``weights_only``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line for line in lines if not any(word in line for word in ("weights_only", "Weights only", "torch.load"))]
    return "; ".join(kept)[:300] or type(err).__name__


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path}: not a safetensors file or a weights-only torch checkpoint "
        f"({_load_reason(err)}); it is not loaded further. Use a .safetensors file, or re-save the state dict "
        "of tensors from a copy you trust")


def _weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)``; None if the file names a global it does not allow."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None


def _unknown_globals(path: Path) -> list[str]:
    """The globals the file names that the weights-only unpickler does not allow, read without
    unpickling; CheckpointError for one that runs code or opens files."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as err:  # not a zip-format torch.save file, or opcodes it does not read
        raise _unreadable(path, err) from err
    acting = [name for name in names if acts(name)]
    if acting:
        raise CheckpointError(f"checkpoint {path} names {', '.join(acting)}, whose only use in a pickle is to run "
                              "code or open files: not a weights-only checkpoint; refusing to read it (nothing in it "
                              "was run)")
    return names


def _load_inert(path: Path) -> Any:
    """The file unpickled with each unknown global as an inert Placeholder."""
    names = _unknown_globals(path)
    try:
        with torch.serialization.safe_globals([(_placeholder_type(name), name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # e.g. items set on a placeholder: the weights-only unpickler refuses them
        raise _unreadable(path, err) from err


def load_torch(path: Path) -> Any:
    """A ``torch.save`` file (a Lightning ``.ckpt`` too) as data: weights-only, else with placeholders."""
    with torch.serialization.safe_globals(_HARMLESS):
        try:
            obj = _weights_only(path)
        except Exception as err:  # torch raises many types for a bad file
            raise _unreadable(path, err) from err
        return obj if obj is not None else _load_inert(path)


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the backbone's tensors in a DINO/DINOv2/timm/Lightning-style checkpoint."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds {type(obj).__name__}, not a state dict")
    for key in _STATE_DICT_KEYS:  # the teacher first: DINO evaluates its teacher
        if isinstance(obj.get(key), dict):
            return _unwrap_state_dict(obj[key])
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a torch checkpoint read as data; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises several types for a bad file
            raise _unreadable(path, err) from err
    obj = load_torch(path)
    try:
        return _unwrap_state_dict(obj)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from err


def normalize_prefix(key: str) -> str:
    """``backbone.encoder`` -> ``backbone.encoder.``; ``""`` stays (the keys as they are)."""
    return key if not key or key.endswith(".") else key + "."


def prefix_matches(keys: Iterable[str], reference: Iterable[str]) -> Counter[str]:
    """Each prefix under which checkpoint keys are reference keys, with how many keys match."""
    reference = set(reference)
    found: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in reference:
                found[".".join(parts[:i]) + ("." if i else "")] += 1
    return found


def _dotted_prefixes(keys: Iterable[str]) -> list[str]:
    """The commonest prefixes of one or two dotted parts (what the encoder's prefix could be)."""
    found: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        found.update(".".join(parts[:i]) + "." for i in range(1, min(3, len(parts))))
    return [prefix for prefix, _ in found.most_common(6)]


def _sample(keys: Iterable[str], n: int = 5) -> str:
    """The first keys, as the file orders them."""
    keys = list(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def find_prefix(keys: Iterable[str], reference: Iterable[str], source: str) -> str:
    """The prefix under which most keys are reference keys: ``''`` if the keys are the model's, else
    e.g. ``backbone.encoder.``; on a tie the shortest (``backbone.`` before ``momentum_backbone.``)."""
    keys = list(keys)
    matches = prefix_matches(keys, reference)
    if not matches:
        raise CheckpointError(
            f"checkpoint {source} does not fit: none of its keys ({_sample(keys)}) is a key of the model under "
            f"any prefix (tried '' and each dotted prefix, e.g. {', '.join(map(repr, _dotted_prefixes(keys)))}); "
            "set encoder.checkpoint_key (convert: --key) to the prefix of the encoder's tensors, "
            "e.g. 'backbone.encoder.'")
    return min(matches, key=lambda prefix: (-matches[prefix], len(prefix), prefix))


def strip_prefix(state: dict[str, torch.Tensor], prefix: str, source: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, without it; CheckpointError naming the keys if there are none."""
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not tensors:
        raise CheckpointError(
            f"checkpoint {source}: no key starts with encoder.checkpoint_key={prefix!r}; its keys are "
            f"{_sample(state)} (prefixes {', '.join(map(repr, _dotted_prefixes(state)))}); set "
            "encoder.checkpoint_key (convert: --key) to one of them, or leave it unset to find it")
    return tensors


def backbone_tensors(state: dict[str, torch.Tensor], key: str | None, reference: Iterable[str],
                     source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the encoder's tensors under timm's names, the prefix they had): under ``key`` if given, else
    under the prefix found from ``reference`` (the model's key names); heads are dropped."""
    prefix = normalize_prefix(key) if key is not None else find_prefix(state, reference, source)
    tensors = strip_prefix(state, prefix, source)
    return {k: v for k, v in tensors.items() if not k.startswith(_HEAD_PREFIXES)}, prefix


@contextmanager
def staged_safetensors(out: Path) -> Iterator[Path]:
    """A temporary ``.safetensors`` path beside ``out``, moved onto it when the block succeeds."""
    tmp = out.with_name(f".{out.name}.partial.safetensors")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors as safetensors (each its own contiguous copy: checkpoints share storage)."""
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path))
