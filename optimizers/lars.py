"""LARS as the LODO code runs it (papers/lodo.md §4.1, §6.1): layer-wise trust ratio and a (1 - p)^2
learning-rate decay over the run's budget.

Why not pytorch-optimizer's ``LARS``: it skips the trust ratio for tensors of <= 1 dimension (biases),
scales by a trust coefficient (1e-3), applies lr outside the momentum buffer and has no schedule. The
LODO code gives every layer the ratio ||w|| / (||g|| + wd ||w||) with no coefficient, puts the
(scheduled) lr inside the buffer, v <- mu v + lr (1-p)^2 trust (g + wd w), w <- w - v, and decays
lr to 0 over the run; with a decaying lr the two placements of lr differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optimizers.common import evaluate, groups_with_grads
from optimizers.registry import NON_NEGATIVE, POSITIVE, UNIT, OptimizerSpec, Range, register


def lars_progress(step: int, total_steps: int, seconds: float = 0.0, total_seconds: float = 0.0) -> float:
    """p: the fraction of the budget completed, min(steps / S, seconds / T) clipped to [0, 1]. A run
    goes on until both budgets are spent, so the later one sets the schedule (the code's
    p = min(time/(T+60), steps/(S+2)), without its small offsets)."""
    p = step / total_steps
    if total_seconds > 0:
        p = min(p, seconds / total_seconds)
    return min(max(p, 0.0), 1.0)


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg 2017, Alg. 1) with LODO's (1 - p)^2 decay (papers/lodo.md §4.1).

    Per parameter tensor ("layer": one per tensor, i.e. per weight and per bias; the official code
    took the MNIST CNN's boundaries for every task, a bug we do not copy):
    trust = ||w|| / (||g|| + wd ||w||); v <- mu v + lr (1 - p)^2 trust (g + wd w); w <- w - v.
    p is the fraction of the budget completed: ``total_steps`` when given, else the runner's step (and
    seconds) budget through ``set_budget``. A layer with ||g|| + wd ||w|| = 0 has g + wd w = 0 and
    is left unchanged (trust 0 instead of 0/0).
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 5e-4,
                 total_steps: int = 0) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr} (must be > 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1))")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
        if int(total_steps) < 0:
            raise ValueError(f"Invalid total_steps: {total_steps} (must be >= 0; 0 = the runner's budget)")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.total_steps, self.total_seconds = int(total_steps), 0.0
        self.clock: Callable[[], float] = lambda: 0.0

    def set_budget(self, steps: int, seconds: float = 0.0, clock: Callable[[], float] | None = None) -> None:
        """Called by the runner before training: the step and seconds budgets and the training clock."""
        if not self.total_steps:
            self.total_steps = int(steps)
            self.total_seconds = float(seconds or 0.0)
            if clock is not None:
                self.clock = clock

    def progress(self, step: int) -> float:
        if not self.total_steps:
            raise RuntimeError("LARS needs total_steps (hyperparameter) or a budget from the runner (set_budget)")
        return lars_progress(step, self.total_steps, self.clock(), self.total_seconds)

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate(closure)
        for group, params in groups_with_grads(self):
            state = self.state[params[0]]
            step = state.get("step", 0)
            scale = group["lr"] * (1.0 - self.progress(step)) ** 2
            for p in params:
                self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            state["step"] = step + 1
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            wd = group["weight_decay"]
            w_norms = torch._foreach_norm(params)
            g_norms = torch._foreach_norm(grads)
            denom = torch._foreach_add(g_norms, w_norms, alpha=wd)
            trust = [torch.where(d > 0, w / d, torch.zeros_like(w)) for w, d in zip(w_norms, denom, strict=True)]
            update = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
            torch._foreach_mul_(update, trust)
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, update, alpha=scale)
            torch._foreach_sub_(params, bufs)
        return loss


register(OptimizerSpec(
    "lars",
    lambda params, lr, momentum, weight_decay, total_steps=0: LARS(params, lr, momentum, weight_decay, total_steps),
    {"lr": POSITIVE, "momentum": UNIT, "weight_decay": NON_NEGATIVE, "total_steps": Range(0, kind=int)},
    doc=LARS.__doc__,
))
