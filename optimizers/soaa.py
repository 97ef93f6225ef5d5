"""SOAA (Vo & Vo, arXiv 2410.02293): Adam moments, a diagonal Fisher estimate r * v-hat and an adaptive
trust-region radius d driven by the ratio of actual to predicted loss reduction (papers/nlar_soaa.md §B.2).

The paper's algorithm box is not available; we follow the rule as two agreeing third-party
transcriptions give it (the zij canon and the nadir C++ class, §B.2):

    m, v = Adam moments; m-hat, v-hat bias-corrected
    r = 1 + sum(m-hat^2) / sum(v-hat + eps)                 (one scalar over *all* parameters)
    s = max(d * r * v-hat, sqrt(v-hat));  u = d * m-hat / (s + eps)
    theta <- theta - lr * wd * theta - lr * u               (decoupled weight decay)
    L = beta1 L + (1 - beta1) loss_t;  L-hat = L / (1 - beta1^t)
    rho = (L-hat - loss_t) / max(p_prev, eps);  q = (t - 1) / T
    d <- min(1 + gamma^q, max((1 - gamma)^q, d * rho))       (d clamped to its time-varying band)
    p_prev = sum over groups of lr * (m-hat . u - 1/2 v-hat . u^2)

Every step is taken (no accept/reject). The sums in r and p run over all parameters of all groups, as
nadir's single flat vector does. ``step(closure)`` calls the closure exactly once: loss_t is the loss of
the step's batch at the current point, which is the loss "after the previous step" that nadir
re-evaluates -- so SOAA costs one loss and gradient evaluation per step, like Adam. The radius,
loss average, predicted reduction and step count live in ``self.state["soaa"]`` (round-trips through
``state_dict()``). ``T`` (``total_steps``) comes from the task's step budget (configs/optimizer/soaa.yaml).
"""

from __future__ import annotations

import math

import torch

from optimizers.adaptive import validate_adam
from optimizers.registry import COUNT, NON_NEGATIVE, POSITIVE, UNIT, OptimizerSpec, Range, register


def radius_band(step: int, total_steps: int, gamma: float) -> tuple[float, float]:
    """The band [(1 - gamma)^q, 1 + gamma^q] with q = (t - 1) / T that d is clamped to at step t."""
    q = (step - 1) / total_steps
    return (1.0 - gamma) ** q, 1.0 + gamma**q


class SOAA(torch.optim.Optimizer):
    """SOAA (arXiv 2410.02293, §B.2 of papers/nlar_soaa.md): Adam with a diagonal-Fisher trust region."""

    SHARED = ("betas", "eps", "gamma", "total_steps")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 gamma: float = 0.1, total_steps: int = 1000) -> None:
        validate_adam(lr, betas, eps)
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"Invalid gamma: {gamma} (must be in (0, 1))")
        if not (int(total_steps) == total_steps and total_steps >= 1):
            raise ValueError(f"Invalid total_steps: {total_steps} (must be an integer >= 1)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gamma=gamma,
                        total_steps=int(total_steps))
        super().__init__(params, defaults)
        for key in self.SHARED:
            values = {group[key] for group in self.param_groups}
            if len(values) > 1:
                raise ValueError(f"SOAA's {key} is global (its sums run over all parameters); groups differ: {values}")

    @property
    def radius(self) -> float:
        """The current trust-region radius d (1 before the first step)."""
        return self.state["soaa"].get("radius", 1.0) if "soaa" in self.state else 1.0

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("SOAA needs the current loss: call step(closure) with a closure returning it")
        with torch.enable_grad():
            loss = closure()
        loss_t = float(loss)
        shared = self.param_groups[0]
        (beta1, beta2), eps, gamma, total = shared["betas"], shared["eps"], shared["gamma"], shared["total_steps"]
        g = self.state["soaa"]
        if not g:
            g.update(step=0, radius=1.0, loss_avg=0.0, predicted=0.0)
        t = g["step"] = g["step"] + 1
        d = g["radius"]
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t

        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            groups.append((group, params))
        params = [p for _, ps in groups for p in ps]
        if not params:
            return loss
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(m, grads, 1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)

        # r = 1 + sum(m-hat^2) / sum(v-hat + eps); sum(v) = ||sqrt(v)||^2 reuses sqrt(v) needed below.
        root_v = list(torch._foreach_sqrt(v))
        n, count = len(params), sum(p.numel() for p in params)
        squares = torch.stack(list(torch._foreach_norm(m + root_v))).square()
        sum_m2, sum_v = squares[:n].sum().item(), squares[n:].sum().item()
        r = 1.0 + (sum_m2 / bc1**2) / (sum_v / bc2 + count * eps)

        # s + eps = max(d r v-hat, sqrt(v-hat)) + eps = (w max(k w, 1) + eps sqrt(bc2)) / sqrt(bc2), with
        # w = sqrt(v), k = d r / sqrt(bc2); the step direction is q = m / (w max(k w, 1) + eps sqrt(bc2)),
        # and u = d sqrt(bc2) / bc1 * q.
        denom = torch._foreach_mul(root_v, d * r / math.sqrt(bc2))
        torch._foreach_clamp_min_(denom, 1.0)
        torch._foreach_mul_(denom, root_v)
        torch._foreach_add_(denom, eps * math.sqrt(bc2))
        q = torch._foreach_div(m, denom)
        u_scale = d * math.sqrt(bc2) / bc1

        # predicted reduction p = sum_g lr_g (m-hat . u - 1/2 v-hat . u^2); m-hat . u >= 0 elementwise, so it is
        # an L1 norm; v-hat . u^2 = ||sqrt(v-hat) u||^2.
        m_dot = torch._foreach_mul(m, q)
        torch._foreach_mul_(root_v, q)
        dots = torch.stack([*torch._foreach_norm(m_dot, 1), *torch._foreach_norm(root_v, 2)]).double()
        first = dots[:n] * (u_scale / bc1)
        second = dots[n:].square() * (u_scale**2 / bc2)
        lrs = torch.tensor([group["lr"] for group, ps in groups for _ in ps], dtype=torch.float64)
        predicted = float((lrs * (first.cpu() - 0.5 * second.cpu())).sum())

        start = 0
        for group, ps in groups:
            if not ps:
                continue
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            torch._foreach_add_(ps, q[start:start + len(ps)], alpha=-lr * u_scale)
            start += len(ps)

        g["loss_avg"] = beta1 * g["loss_avg"] + (1.0 - beta1) * loss_t
        ratio = (g["loss_avg"] / bc1 - loss_t) / max(g["predicted"], eps)
        low, high = radius_band(t, total, gamma)
        g["radius"] = min(high, max(low, d * ratio))
        g["predicted"] = predicted
        return loss


register(OptimizerSpec(
    "soaa",
    lambda params, lr, beta1, beta2, eps, weight_decay, gamma, total_steps: SOAA(
        params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, gamma=gamma,
        total_steps=total_steps),
    {"lr": POSITIVE, "beta1": UNIT, "beta2": UNIT, "eps": POSITIVE, "weight_decay": NON_NEGATIVE,
     "gamma": Range(0.0, 1.0, True, True), "total_steps": COUNT},
    doc=SOAA.__doc__,
))
