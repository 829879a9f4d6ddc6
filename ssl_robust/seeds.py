"""Seeds of independent random streams, derived from a run's seed and the stream's name."""
from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 56-bit seed for one random stream, e.g. ``derive_seed(seed, "augment", epoch, batch)`` or
    ``derive_seed(seed, "start", item)``: streams of different names never share a seed by design."""
    blob = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:7], "big")
