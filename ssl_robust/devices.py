"""Where tensors run: ``device: auto`` means CUDA when present, else the CPU."""
from __future__ import annotations

import torch

from ssl_robust.config_file import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; ConfigError naming ``device`` when it is not available here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r}: not a torch device ({err})") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name!r}: no CUDA device is available on this machine; "
                              "use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device
