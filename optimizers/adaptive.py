"""Adam and Yogi with the semantics the LODO code ran (Keras/TF2), as ``_foreach`` cores.

torch.optim.Adam puts epsilon on the bias-corrected sqrt(v-hat); Keras puts it on sqrt(v) and folds
both bias corrections into the step size (papers/lodo.md §1.4, §4.1). The two differ whenever
gradients are near epsilon, which is exactly the regime of the Rosenbrock table, so we keep Keras's
form. Yogi here is LODO's own variant (no bias correction, epsilon 1e-3), which pytorch-optimizer's
Yogi (bias-corrected, v initialised to 1e-6) is not.
"""

from __future__ import annotations

import math

import torch

from optimizers.common import evaluate, groups_with_grads
from optimizers.registry import POSITIVE, UNIT, OptimizerSpec, Range, register


def validate_adam(lr: float, betas: tuple[float, float], eps: float) -> None:
    """Adam-family checks: lr > 0, each beta in [0, 1), eps > 0."""
    if not lr > 0.0:
        raise ValueError(f"Invalid learning rate: {lr} (must be > 0)")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta{i + 1}: {beta} (must be in [0, 1))")
    if not eps > 0.0:
        raise ValueError(f"Invalid epsilon: {eps} (must be > 0)")


class _MomentOptimizer(torch.optim.Optimizer):
    """Shared skeleton: first moment m (EMA), a second-moment rule from the subclass, then
    x <- x - step_size * m / (sqrt(v) + eps)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float) -> None:
        validate_adam(lr, betas, eps)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    def _second_moment_(self, v: list[torch.Tensor], grads: list[torch.Tensor], beta2: float) -> None:
        raise NotImplementedError

    def _step_size(self, lr: float, betas: tuple[float, float], step: int) -> float:
        return lr

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate(closure)
        for group, params in groups_with_grads(self):
            for p in params:
                if not self.state[p]:
                    self.state[p] = {
                        "step": 0,
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                self.state[p]["step"] += 1
            grads = [p.grad for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(m, grads, 1.0 - beta1)
            self._second_moment_(v, grads, beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, group["eps"])
            step_size = self._step_size(group["lr"], group["betas"], self.state[params[0]]["step"])
            torch._foreach_addcdiv_(params, m, denom, value=-step_size)
        return loss


class KerasAdam(_MomentOptimizer):
    """Adam (Kingma & Ba 2015, Alg. 1 with the "epsilon-hat" form) as Keras/TF2 runs it:
    lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t);  x <- x - lr_t * m / (sqrt(v) + eps).
    LODO's baselines used this (papers/lodo.md §1.4, §4.1); default eps is Keras's 1e-7."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-7) -> None:
        super().__init__(params, lr, betas, eps)

    def _second_moment_(self, v, grads, beta2):
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)

    def _step_size(self, lr, betas, step):
        beta1, beta2 = betas
        return lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


class Yogi(_MomentOptimizer):
    """Yogi (Zaheer et al. 2018) as the LODO code implements it (papers/lodo.md §4.1):
    v <- v - (1 - beta2) sign(v - g^2) g^2, no bias correction, m0 = v0 = 0, eps = 1e-3."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-3) -> None:
        super().__init__(params, lr, betas, eps)

    def _second_moment_(self, v, grads, beta2):
        g2 = torch._foreach_mul(grads, grads)
        sign = torch._foreach_sub(v, g2)
        torch._foreach_sign_(sign)
        torch._foreach_mul_(sign, g2)
        torch._foreach_add_(v, sign, alpha=-(1.0 - beta2))


def _adam_like(cls):
    def build(params, lr, beta1, beta2, eps):
        return cls(params, lr=lr, betas=(beta1, beta2), eps=eps)

    return build


ADAM_SCHEMA = {"lr": POSITIVE, "beta1": UNIT, "beta2": UNIT, "eps": POSITIVE}

register(OptimizerSpec("adam", _adam_like(KerasAdam), ADAM_SCHEMA, doc=KerasAdam.__doc__))
register(OptimizerSpec("yogi", _adam_like(Yogi), ADAM_SCHEMA, doc=Yogi.__doc__))
register(
    OptimizerSpec(
        "adamw",
        lambda params, lr, beta1, beta2, eps, weight_decay: torch.optim.AdamW(
            params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, foreach=True
        ),
        {**ADAM_SCHEMA, "weight_decay": Range(0.0)},
        doc="torch.optim.AdamW (Loshchilov & Hutter 2019), decoupled weight decay.",
    )
)
register(
    OptimizerSpec(
        "momentum",
        lambda params, lr, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True),
        {"lr": POSITIVE, "momentum": UNIT},
        doc="Heavy-ball SGD. torch.optim.SGD's buffer b <- mu b + g, x <- x - lr b equals Keras's "
        "v <- mu v - lr g, x <- x + v for a constant lr, which is what LODO ran (§4.1).",
    )
)
register(
    OptimizerSpec(
        "rmsprop",
        lambda params, lr, rho, momentum, eps: torch.optim.RMSprop(
            params, lr=lr, alpha=rho, eps=eps, momentum=momentum, foreach=True
        ),
        {"lr": POSITIVE, "rho": UNIT, "momentum": UNIT, "eps": POSITIVE},
        doc="RMSprop, not centred. torch.optim.RMSprop adds eps to sqrt(v) and accumulates "
        "lr-free momentum, which equals Keras's form for a constant lr (LODO §4.1, eps 1e-7).",
    )
)
