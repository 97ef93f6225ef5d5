"""Helpers for optimizers that work on the flattened parameter vector x = cat(p.reshape(-1) for p).

Quasi-Newton and Newton-type methods (papers/lodo.md §4.1) act on x as one vector, as the LODO code
did. Every helper flattens in the order of ``params``, so a vector from ``flat_grad`` lines up with
``flat_params`` and with the rows/columns of a dense Hessian built the same way. All parameters must
share one dtype and device (``check_flat``); ``torch.cat`` would otherwise silently promote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from optimizers.common import evaluate


def check_flat(params: Sequence[Tensor]) -> None:
    """Raise ValueError unless ``params`` is non-empty, dense, and of one dtype and one device."""
    if len(params) == 0:
        raise ValueError("Invalid params: the optimizer got an empty parameter list")
    dtype, device = params[0].dtype, params[0].device
    for i, p in enumerate(params):
        if p.is_sparse:
            raise ValueError(f"Invalid params: parameter {i} is sparse; flat optimizers need dense tensors")
        if p.dtype != dtype or p.device != device:
            raise ValueError(
                f"Invalid params: parameter {i} is {p.dtype} on {p.device}, expected {dtype} on {device} "
                "(flat optimizers need one dtype and one device)"
            )


def single_flat_group(opt: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters of ``opt``'s only group; ValueError if it has several groups or fails
    ``check_flat``. Call at the end of a flat optimizer's ``__init__``."""
    if len(opt.param_groups) != 1:
        raise ValueError(
            f"Invalid params: {type(opt).__name__} works on one flat vector and supports one parameter "
            f"group, got {len(opt.param_groups)}"
        )
    params = opt.param_groups[0]["params"]
    check_flat(params)
    return params


def require_closure(opt: torch.optim.Optimizer, closure: Callable | None) -> Callable:
    """``closure``, or RuntimeError if it is None (flat optimizers re-evaluate the loss themselves)."""
    if closure is None:
        raise RuntimeError(f"{type(opt).__name__}.step() requires a closure that re-evaluates the loss")
    return closure


class FlatOptimizer(torch.optim.Optimizer):
    """Base of the optimizers that act on one flat vector: one parameter group of one dtype and
    device (checked at construction), and a step that needs a closure."""

    def __init__(self, params, defaults: dict) -> None:
        super().__init__(params, defaults)
        single_flat_group(self)

    def _evaluate(self, closure: Callable | None) -> tuple[dict, dict, Tensor, Tensor]:
        """Call the closure once with gradients enabled; return (group, state, loss, flat gradient)."""
        loss = evaluate(require_closure(self, closure))
        group = self.param_groups[0]
        return group, self.state[group["params"][0]], loss, flat_grad(group["params"])


def flat_params(params: Sequence[Tensor]) -> Tensor:
    """The concatenated parameter vector (a new tensor; no per-parameter clone is made first)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """The concatenated gradient vector, with zeros for parameters whose ``.grad`` is None."""
    return torch.cat(
        [
            p.grad.reshape(-1)
            if p.grad is not None
            else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            for p in params
        ]
    )


def _views(params: Sequence[Tensor], vec: Tensor) -> list[Tensor]:
    numels = [p.numel() for p in params]
    if vec.numel() != sum(numels):
        raise ValueError(f"flat vector has {vec.numel()} elements, the parameters have {sum(numels)}")
    return [v.view_as(p) for v, p in zip(vec.split(numels), params, strict=True)]


def add_flat_(params: Sequence[Tensor], vec: Tensor, alpha: float = 1.0) -> None:
    """In place: p += alpha * (the slice of ``vec`` belonging to p), for every parameter."""
    with torch.no_grad():
        torch._foreach_add_(list(params), _views(params, vec), alpha=alpha)


def set_flat_(params: Sequence[Tensor], vec: Tensor) -> None:
    """In place: copy the slices of ``vec`` into the parameters."""
    with torch.no_grad():
        torch._foreach_copy_(list(params), _views(params, vec))
