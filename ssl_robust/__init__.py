"""ssl_robust: adversarial robustness of self-supervised vision encoders across downstream tasks.

``ssl_robust.evaluate(model, images, targets, task=..., eps=...)`` attacks any model with the
task's standard suite (``ssl_robust/evaluation.py``); it is imported on first use, so that
``import ssl_robust`` (and the command line's help) stays free of torch.
"""
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from ssl_robust.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'ssl_robust' has no attribute {name!r}")
