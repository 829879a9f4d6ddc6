"""Where a DeACL student's weights live: the file, the run artifact and the ``runs:/`` URI of epoch
N, written and parsed here only, so that training, tracking and the report cannot drift apart."""
from __future__ import annotations

import re

CHECKPOINTS = "checkpoints"  # the run's artifact folder of the students


def student_file(epoch: int) -> str:
    """``epoch_003.safetensors``: epoch N's student weights (timm state dict)."""
    return f"epoch_{epoch:03d}.safetensors"


def student_artifact(epoch: int) -> str:
    """The student's artifact path in its DeACL run."""
    return f"{CHECKPOINTS}/{student_file(epoch)}"


STUDENT_URI = re.compile(rf"^runs:/(?P<run>[^/]+)/{CHECKPOINTS}/epoch_(?P<epoch>\d+)\.safetensors$")
