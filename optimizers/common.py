"""The step prologue every gradient-based optimizer here shares (torch.optim's closure protocol)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def evaluate(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """Call ``closure`` with gradients enabled (inside a ``no_grad`` step), as torch.optim does."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def groups_with_grads(optimizer: torch.optim.Optimizer) -> Iterator[tuple[dict, list[torch.Tensor]]]:
    """Each parameter group with its parameters that have a gradient; groups without any are skipped."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            yield group, params
