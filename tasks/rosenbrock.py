"""LODO's rescaled Rosenbrock function (papers/lodo.md §3.2)."""

from __future__ import annotations

import torch

from tasks.base import VectorTask
from tasks.registry import register


@register
class Rosenbrock(VectorTask):
    """f(x, y) = 0.01 (1 - x)^2 + (y - x^2)^2, i.e. the standard Rosenbrock divided by 100, started at
    (-0.5, 2) where f = 3.085; minimum f(1, 1) = 0. Deterministic: no batches, no noise."""

    name = "rosenbrock"

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, start=(-0.5, 2.0), **context) -> None:
        super().__init__(torch.tensor(start, dtype=torch.float64), seed, device, dtype, **context)

    def flat_loss(self, x: torch.Tensor, batch=None) -> torch.Tensor:
        return 0.01 * (1.0 - x[0]) ** 2 + (x[1] - x[0] ** 2) ** 2
