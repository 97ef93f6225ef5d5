"""LARS with LODO's schedule (papers/lodo.md §4.1, §6.1) against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

import optimizers
from optimizers.lars import LARS, lars_progress


def test_two_steps_by_hand_with_per_tensor_trust_and_schedule():
    lr, mu, wd, total = 0.1, 0.9, 0.01, 4
    w = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)  # ||w|| = 5
    b = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)      # a bias is a layer of its own
    opt = optimizers.build("lars", [w, b], {"lr": lr, "momentum": mu, "weight_decay": wd, "total_steps": total})
    gw1, gb1 = torch.tensor([0.6, 0.8], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)

    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw1.clone(), gb1.clone()
    opt.step()
    trust_w = 5.0 / (1.0 + wd * 5.0)
    trust_b = 1.0 / (2.0 + wd * 1.0)
    vw = lr * (1 - 0 / total) ** 2 * trust_w * (gw1 + wd * w0)
    vb = lr * (1 - 0 / total) ** 2 * trust_b * (gb1 + wd * b0)
    assert torch.allclose(w.detach(), w0 - vw, rtol=1e-14), f"step 1: expected {w0 - vw}, got {w.detach()}"
    assert torch.allclose(b.detach(), b0 - vb, rtol=1e-14), f"step 1: expected {b0 - vb}, got {b.detach()}"

    w1, b1 = w.detach().clone(), b.detach().clone()
    gw2, gb2 = torch.tensor([-1.0, 0.5], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    w.grad, b.grad = gw2.clone(), gb2.clone()
    opt.step()
    tw = w1.norm() / (gw2.norm() + wd * w1.norm())
    tb = b1.norm() / (gb2.norm() + wd * b1.norm())
    decay = (1 - 1 / total) ** 2
    vw = mu * vw + lr * decay * tw * (gw2 + wd * w1)
    vb = mu * vb + lr * decay * tb * (gb2 + wd * b1)
    assert torch.allclose(w.detach(), w1 - vw, rtol=1e-14), f"step 2: expected {w1 - vw}, got {w.detach()}"
    assert torch.allclose(b.detach(), b1 - vb, rtol=1e-14), f"step 2: expected {b1 - vb}, got {b.detach()}"


def test_schedule_reaches_zero_and_uses_the_later_budget():
    assert lars_progress(0, 10) == 0.0 and lars_progress(5, 10) == 0.5 and lars_progress(20, 10) == 1.0
    assert lars_progress(5, 10, seconds=2.0, total_seconds=8.0) == 0.25, "p = min(step, time fractions)"
    x = torch.ones(2, requires_grad=True)
    opt = LARS([x], lr=1.0, momentum=0.0, weight_decay=0.0, total_steps=1)
    opt.step()  # no grad yet: nothing happens
    x.grad = torch.ones(2)
    opt.step()  # p = 0 at the first step
    moved = x.detach().clone()
    x.grad = torch.ones(2)
    opt.step()  # p = 1: lr (1 - p)^2 = 0, momentum 0
    assert torch.equal(x.detach(), moved), "at p = 1 the step must be 0"


def test_zero_layer_stays_finite_and_runner_supplies_the_budget():
    z = torch.zeros(3, requires_grad=True)
    opt = LARS([z], lr=0.1, total_steps=10)
    z.grad = torch.zeros(3)
    opt.step()
    assert torch.isfinite(z).all() and not z.any(), "a zero layer with zero gradient must not move or NaN"

    import tasks
    from runners.loop import train

    task = tasks.get("rosenbrock")(seed=0, device=torch.device("cpu"), dtype=torch.float64)
    lars = optimizers.build("lars", task.parameters(), {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
                                                        "total_steps": 0})
    result = train(task, lars, {"steps": 20})
    assert lars.total_steps == 20, f"the runner's step budget should set total_steps, got {lars.total_steps}"
    assert math.isfinite(result.curve["loss"].iloc[-1])
    with pytest.raises(RuntimeError, match="total_steps"):
        y = torch.ones(1, requires_grad=True)
        y.grad = torch.ones(1)
        LARS([y]).step()
