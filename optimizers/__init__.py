"""Optimizer registry; importing this package registers every optimizer."""

from optimizers import (  # noqa: F401  (registration side effects)
    adamhd,
    adaptive,
    amolf,
    l2l,
    lars,
    lm_scg,
    lodo,
    molf,
    nlar,
    orthogonal,
    quasi_newton,
    second_order,
    soaa,
)
from optimizers.registry import ConfigError, OptimizerSpec, Range, build, get, names, register

__all__ = ["ConfigError", "OptimizerSpec", "Range", "build", "get", "names", "register"]
