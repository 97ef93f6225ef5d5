"""Update rules of the first-order baselines against hand-computed steps (papers/lodo.md §4.1)."""

from __future__ import annotations

import copy
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimizers


def one_step(name: str, hparams: dict, x0, grads):
    """Apply the optimizer to f(x) = g_t . x with the given gradient sequence; return the iterates."""
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = optimizers.build(name, [x], hparams)
    out = []
    for g in grads:
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(x.detach().clone())
    return out


def test_keras_adam_two_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-7
    g1, g2 = 0.5, -2.0
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
    x1 = 1.0 - lr * math.sqrt(1 - b2) / (1 - b1) * m1 / (math.sqrt(v1) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
    x2 = x1 - lr * math.sqrt(1 - b2**2) / (1 - b1**2) * m2 / (math.sqrt(v2) + eps)
    got = one_step("adam", {"lr": lr, "beta1": b1, "beta2": b2, "eps": eps}, [1.0], [[g1], [g2]])
    assert math.isclose(got[0].item(), x1, rel_tol=1e-14), f"expected {x1}, got {got[0].item()}"
    assert math.isclose(got[1].item(), x2, rel_tol=1e-14), f"expected {x2}, got {got[1].item()}"


def test_keras_adam_puts_eps_outside_bias_correction():
    """With g ~ eps the Keras form differs from torch.optim.Adam's (eps on sqrt(v-hat))."""
    lr, eps, g = 1.0, 1e-7, 1e-7
    keras = one_step("adam", {"lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": eps}, [0.0], [[g]])[0].item()
    expected = -lr * math.sqrt(1 - 0.999) / (1 - 0.9) * (0.1 * g) / (math.sqrt(0.001) * g + eps)
    assert math.isclose(keras, expected, rel_tol=1e-12), f"expected {expected}, got {keras}"
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    x.grad = torch.full((1,), g, dtype=torch.float64)
    torch.optim.Adam([x], lr=lr, eps=eps).step()
    assert not math.isclose(keras, x.item(), rel_tol=1e-3), "Keras and torch Adam should differ at g ~ eps"


def test_yogi_lodo_variant_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    g1, g2 = 2.0, 0.5
    m1, v1 = (1 - b1) * g1, 0.0 - (1 - b2) * math.copysign(1, 0.0 - g1**2) * g1**2
    x1 = 1.0 - lr * m1 / (math.sqrt(v1) + eps)
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = v1 - (1 - b2) * math.copysign(1, v1 - g2**2) * g2**2
    x2 = x1 - lr * m2 / (math.sqrt(v2) + eps)
    got = one_step("yogi", {"lr": lr, "beta1": b1, "beta2": b2, "eps": eps}, [1.0], [[g1], [g2]])
    assert math.isclose(got[0].item(), x1, rel_tol=1e-14), f"expected {x1}, got {got[0].item()}"
    assert math.isclose(got[1].item(), x2, rel_tol=1e-14), f"expected {x2}, got {got[1].item()}"


def test_momentum_is_keras_heavy_ball():
    lr, mu, gs = 0.1, 0.9, [1.0, -0.5, 2.0]
    x, v, expected = 1.0, 0.0, []
    for g in gs:
        v = mu * v - lr * g
        x += v
        expected.append(x)
    got = [t.item() for t in one_step("momentum", {"lr": lr, "momentum": mu}, [1.0], [[g] for g in gs])]
    assert all(math.isclose(a, b, rel_tol=1e-14) for a, b in zip(got, expected, strict=True)), f"{expected} vs {got}"


def test_rmsprop_is_keras_rmsprop():
    lr, rho, mu, eps, gs = 0.01, 0.9, 0.5, 1e-7, [1.0, -0.5, 2.0]
    x, rms, mom, expected = 1.0, 0.0, 0.0, []
    for g in gs:
        rms = rho * rms + (1 - rho) * g * g
        mom = mu * mom + lr * g / (math.sqrt(rms) + eps)
        x -= mom
        expected.append(x)
    got = [t.item() for t in one_step("rmsprop", {"lr": lr, "rho": rho, "momentum": mu, "eps": eps}, [1.0],
                                      [[g] for g in gs])]
    assert all(math.isclose(a, b, rel_tol=1e-13) for a, b in zip(got, expected, strict=True)), f"{expected} vs {got}"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3).filter(lambda g: abs(g) > 1e-3), min_size=1, max_size=8),
       st.floats(1e-4, 1.0), st.floats(0.0, 0.99), st.floats(0.9, 0.9999))
def test_keras_adam_first_step_is_about_lr_per_coordinate(grads, lr, b1, b2):
    """Adam's first step has magnitude lr * |g| / (|g| + eps / sqrt(1 - beta2)) < lr in every coordinate."""
    x = one_step("adam", {"lr": lr, "beta1": b1, "beta2": b2, "eps": 1e-7}, [0.0] * len(grads), [grads])[0]
    g = torch.tensor(grads, dtype=torch.float64)
    expected = -lr * torch.sign(g) * g.abs() / (g.abs() + 1e-7 / math.sqrt(1 - b2))
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=0)


def test_state_dict_round_trip_resumes_exactly():
    def make():
        x = torch.linspace(-1, 1, 5, dtype=torch.float64).requires_grad_(True)
        return x, optimizers.build("yogi", [x], {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-3})

    x, opt = make()
    for k in range(3):
        x.grad = torch.sin(x.detach() * (k + 1))
        opt.step()
    y, fresh = make()
    with torch.no_grad():
        y.copy_(x)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read back from a checkpoint
    for k in range(2):
        for p, o in ((x, opt), (y, fresh)):
            p.grad = torch.cos(p.detach() * (k + 2))
            o.step()
    assert torch.equal(x, y), "a reloaded optimizer must continue bitwise identically"
