"""AdamHD: Adam whose single learning rate is itself learned by hypergradient descent (Baydin et al.
2018, "Online Learning Rate Adaptation with Hypergradient Descent", arXiv 1703.04782, Alg. 2 /
Eq. for alpha_t), as the Nlar experiments ran it (papers/nlar_soaa.md §A.2).

    h_t   = g_t . u_{t-1},  u = sqrt(1 - b2^(t-1)) / (1 - b1^(t-1)) * m_{t-1} / (sqrt(v_{t-1}) + eps)
    lr_t  = lr_{t-1} + beta h_t
    theta = theta - lr_t sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps)      (Keras's eps-hat Adam)

Ordering (``per_step``): Baydin's official PyTorch code and the Nlar TF port both update the shared
learning rate *tensor by tensor* inside the parameter loop, so tensor i of a step already uses the
rate moved by the hypergradient of tensors 1..i. That is our default (``per_step: false``). The
paper's algorithm takes one global dot product per step and moves the rate once before any tensor
is updated (``per_step: true``). The total increment per step is the same.

Built on ``optimizers.adaptive.KerasAdam`` (its moment and step-size rules): pytorch-optimizer has no
AdamHD, and torch.optim.Adam puts eps on the bias-corrected sqrt(v), which Baydin's code does not.
The learning rate lives in ``group["lr"]``, as in Baydin's code, so ``state_dict()`` carries it.
"""

from __future__ import annotations

import torch

from optimizers.adaptive import ADAM_SCHEMA, KerasAdam
from optimizers.common import evaluate, groups_with_grads
from optimizers.registry import NON_NEGATIVE, OptimizerSpec, Range, register


class AdamHD(KerasAdam):
    """Adam with a hypergradient-descent learning rate (Baydin et al. 2018, arXiv 1703.04782), with
    the official code's per-tensor ordering by default and the paper's per-step form as an option.
    Defaults: the Nlar experiments' eps = 1e-8 and beta = 1e-7 (Figure 2), Baydin's lr = 1e-3."""

    def __init__(self, params, lr: float = 1e-3, hypergrad_lr: float = 1e-7, betas=(0.9, 0.999),
                 eps: float = 1e-8, per_step: bool = False) -> None:
        if not hypergrad_lr >= 0.0:
            raise ValueError(f"Invalid hypergrad_lr: {hypergrad_lr} (must be >= 0)")
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        for group in self.param_groups:
            group.setdefault("hypergrad_lr", hypergrad_lr)
            group.setdefault("per_step", bool(per_step))

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate(closure)
        for group, params in groups_with_grads(self):
            for p in params:
                if not self.state[p]:
                    self.state[p] = {"step": 0, **{k: torch.zeros_like(p, memory_format=torch.preserve_format)
                                                   for k in ("exp_avg", "exp_avg_sq", "direction")}}
                self.state[p]["step"] += 1
            states = [self.state[p] for p in params]
            step = states[0]["step"]
            grads = [p.grad for p in params]
            betas, lr = group["betas"], group["lr"]
            if step > 1 and group["hypergrad_lr"]:
                # h_i = g_i . m/(sqrt(v)+eps) of the previous step, times its bias correction
                dots = torch.stack([torch.dot(g.reshape(-1), s["direction"].reshape(-1))
                                    for g, s in zip(grads, states, strict=True)])
                h = dots * self._step_size(1.0, betas, step - 1)
                moves = group["hypergrad_lr"] * (h.sum().expand(len(h)) if group["per_step"] else h.cumsum(0))
                rates = (lr + moves).tolist()  # the rate each tensor uses
                group["lr"] = rates[-1]
            else:
                rates = [lr] * len(params)
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(m, grads, 1.0 - betas[0])
            self._second_moment_(v, grads, betas[1])
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, group["eps"])
            direction = torch._foreach_div(m, denom)  # m / (sqrt(v) + eps), kept for the next hypergradient
            for s, d in zip(states, direction, strict=True):
                s["direction"] = d
            correction = self._step_size(1.0, betas, step)
            torch._foreach_add_(params, torch._foreach_mul(direction, [-r * correction for r in rates]))
        return loss


register(OptimizerSpec(
    "adamhd",
    lambda params, beta1=0.9, beta2=0.999, **hparams: AdamHD(params, betas=(beta1, beta2), **hparams),
    {**ADAM_SCHEMA, "hypergrad_lr": NON_NEGATIVE, "per_step": Range(kind=bool)},
    doc=AdamHD.__doc__,
))
