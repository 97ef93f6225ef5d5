"""Optimizer registry; importing this package registers every optimizer."""

from optimizers import adaptive, quasi_newton, second_order  # noqa: F401  (registration side effects)
from optimizers.registry import ConfigError, OptimizerSpec, Range, build, get, names, register

__all__ = ["ConfigError", "OptimizerSpec", "Range", "build", "get", "names", "register"]
