"""The only Ray (and Optuna) code: the benchmark sweep (``grid``) and, beside it, DeACL sweeps."""

RESOURCE_TIMEOUT_S = 300.0  # how long a sweep on a joined cluster waits for one trial's resources
