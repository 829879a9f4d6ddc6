"""The only Ray (and Optuna) code: the benchmark sweep (``grid``) and, beside it, DeACL sweeps."""
