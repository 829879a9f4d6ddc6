"""The errors a user's input can cause, in a module without dependencies, so the command line can
name them before it loads torch, Ray or MLflow. Each message is one line that names what is wrong."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not weights-only, or not this model's."""


class ArtifactError(RuntimeError):
    """An artifact URI that cannot be fetched; the message names the URI and what is missing."""


class PreflightError(RuntimeError):
    """The tracking store or the S3 endpoint is not usable; the message is one line."""
