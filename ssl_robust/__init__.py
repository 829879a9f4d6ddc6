"""ssl_robust: adversarial robustness of self-supervised vision encoders across downstream tasks."""

__version__ = "0.1.0"
