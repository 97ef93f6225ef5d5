"""Tests for optimizers/quasi_newton.py (online L-BFGS, O-LBFGS, BFGS) and the optimizers/flat.py helpers.

The reference iterates are computed in NumPy with the dense inverse-Hessian recursion
H <- V^T H V + rho s s^T, V = I - rho y s^T (which the two-loop recursion must reproduce), on
f(x) = 1/2 x^T A x - b^T x with x split over two parameters of shapes (2,) and (1, 1).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from optimizers.flat import add_flat_, flat_grad, flat_params, set_flat_
from optimizers.quasi_newton import BFGS, LBFGS, OLBFGS, OnlineLBFGS

A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
B = np.array([1.0, -2.0, 0.5])
X0 = np.array([1.0, 2.0, -1.0])
I3 = np.eye(3)


def grad_np(x: np.ndarray) -> np.ndarray:
    return A @ x - B


def make_params(x: np.ndarray) -> list[torch.Tensor]:
    xt = torch.tensor(x, dtype=torch.float64)
    return [xt[:2].clone().requires_grad_(), xt[2:].reshape(1, 1).clone().requires_grad_()]


def as_np(params: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in params]).numpy()


class QuadClosure:
    """Deterministic closure for f(x) = 1/2 x^T A x - b^T x over ``params``; counts its calls."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.A = torch.tensor(A)
        self.b = torch.tensor(B)
        self.calls = 0
        self.losses: list[float] = []

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        for p in self.params:
            p.grad = None
        x = torch.cat([p.reshape(-1) for p in self.params])
        loss = 0.5 * x @ self.A @ x - self.b @ x
        loss.backward()
        self.losses.append(loss.item())
        return loss


def run(opt_cls, x0: np.ndarray, steps: int, **kw) -> list[np.ndarray]:
    params = make_params(x0)
    opt = opt_cls(params, **kw)
    closure = QuadClosure(params)
    xs = [as_np(params)]
    for _ in range(steps):
        opt.step(closure)
        xs.append(as_np(params))
    return xs


def ref_online_lbfgs(x0, steps, lr, tau, eps, history, lam, scaling) -> list[np.ndarray]:
    """Dense NumPy reference for Schraudolph's online L-BFGS as the LODO code runs it."""
    x, pairs, xs = x0.copy(), [], [x0.copy()]
    for t in range(steps):
        g = grad_np(x)
        if not pairs:
            p = -eps * g
        else:
            buf = pairs[-history:]
            if scaling == "oldest":
                gamma = buf[0][0] @ buf[-1][1] / (buf[-1][1] @ buf[-1][1])
            else:
                gamma = np.mean([s @ y / (y @ y) for s, y in buf])
            H = gamma * I3
            for s, y in buf:  # oldest to newest
                rho = 1.0 / (s @ y)
                V = I3 - rho * np.outer(y, s)
                H = V.T @ H @ V + rho * np.outer(s, s)
            p = -H @ g
        s = lr * tau / (tau + t) * p
        x_new = x + s
        pairs.append((s, grad_np(x_new) - g + lam * s))
        x = x_new
        xs.append(x.copy())
    return xs


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-12) -> None:
    assert np.allclose(got, expected, rtol=rtol, atol=1e-14), f"{what}: expected {expected}, got {got}"


# ---- flat helpers -------------------------------------------------------------------------------


def test_flat_helpers_roundtrip_in_parameter_order():
    params = make_params(X0)
    assert_close(flat_params(params).numpy(), X0, "flat_params")
    add_flat_(params, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), alpha=-2.0)
    assert_close(as_np(params), X0 - 2.0 * np.array([1.0, 2.0, 3.0]), "add_flat_")
    set_flat_(params, torch.tensor([7.0, 8.0, 9.0], dtype=torch.float64))
    assert_close(as_np(params), np.array([7.0, 8.0, 9.0]), "set_flat_")
    params[0].grad = torch.tensor([1.0, -1.0], dtype=torch.float64)  # params[1].grad stays None
    assert_close(flat_grad(params).numpy(), np.array([1.0, -1.0, 0.0]), "flat_grad with a None grad")


# ---- online L-BFGS / O-LBFGS --------------------------------------------------------------------


def test_first_step_is_eps_scaled_gradient_with_defaults():
    x0 = np.zeros(3)  # g0 = -b, so x1 = eta0 * eps * b exactly representable in relative terms
    for cls in (LBFGS, OLBFGS):
        x1 = run(cls, x0, 1)[1]
        assert_close(x1, 1e-3 * 1e-10 * B, f"{cls.__name__} first step -eta0*eps*g")


def test_second_step_matches_one_pair_closed_form():
    lr, tau, eps, lam = 1.0, 2.0, 0.1, 0.1
    g0 = grad_np(X0)
    s0 = -lr * eps * g0  # eta_0 = lr
    x1 = X0 + s0
    y0 = grad_np(x1) - g0 + lam * s0
    g1 = grad_np(x1)
    rho = 1.0 / (s0 @ y0)
    gamma = (s0 @ y0) / (y0 @ y0)  # with one pair both scalings agree
    H1 = gamma * (I3 - rho * np.outer(s0, y0)) @ (I3 - rho * np.outer(y0, s0)) + rho * np.outer(s0, s0)
    x2 = x1 - lr * tau / (tau + 1) * H1 @ g1
    xs = run(LBFGS, X0, 2, lr=lr, tau=tau, eps=eps, lam=lam)
    assert_close(xs[1], x1, "LBFGS x1")
    assert_close(xs[2], x2, "LBFGS x2 (one-pair two-loop closed form)")
    xs_o = run(OLBFGS, X0, 2, lr=lr, tau=tau, eps=eps)  # lam = 0 for O-LBFGS
    y0_o = y0 - lam * s0
    rho, gamma = 1.0 / (s0 @ y0_o), (s0 @ y0_o) / (y0_o @ y0_o)
    H1 = gamma * (I3 - rho * np.outer(s0, y0_o)) @ (I3 - rho * np.outer(y0_o, s0)) + rho * np.outer(s0, s0)
    assert_close(xs_o[2], x1 - lr * tau / (tau + 1) * H1 @ g1, "OLBFGS x2 (one-pair closed form)")


def test_third_step_oldest_vs_average_scaling_on_two_pairs():
    kw = {"lr": 1.0, "tau": 2.0, "eps": 0.1, "history": 2}
    got_l = run(LBFGS, X0, 3, **kw)
    got_o = run(OLBFGS, X0, 3, **kw)
    ref_l = ref_online_lbfgs(X0, 3, lam=0.0, scaling="oldest", **kw)
    ref_o = ref_online_lbfgs(X0, 3, lam=0.0, scaling="average", **kw)
    assert np.abs(ref_l[3] - ref_o[3]).max() > 1e-3, "test problem does not separate the two scalings"
    for i in range(4):
        assert_close(got_l[i], ref_l[i], f"LBFGS (s_oldest^T y_newest scaling) x{i}")
        assert_close(got_o[i], ref_o[i], f"OLBFGS (buffer-average scaling) x{i}")


@pytest.mark.parametrize("scaling", ["oldest", "average"])
def test_ring_buffer_wraps_like_reference(scaling):
    kw = {"lr": 0.5, "tau": 3.0, "eps": 0.2, "history": 2, "lam": 0.05}
    got = run(OnlineLBFGS, X0, 6, scaling=scaling, **kw)
    ref = ref_online_lbfgs(X0, 6, scaling=scaling, **kw)
    for i, (a, e) in enumerate(zip(got, ref, strict=True)):
        assert_close(a, e, f"OnlineLBFGS({scaling}) x{i} with history 2", rtol=1e-10)


@pytest.mark.parametrize("cls", [LBFGS, OLBFGS])
def test_lbfgs_calls_closure_twice_and_returns_first_loss(cls):
    params = make_params(X0)
    opt = cls(params, lr=1.0, tau=2.0, eps=0.1)
    closure = QuadClosure(params)
    for k in range(1, 4):
        x_old = as_np(params)
        loss = opt.step(closure)
        assert closure.calls == 2 * k, f"expected {2 * k} closure calls after {k} steps, got {closure.calls}"
        expected = 0.5 * x_old @ A @ x_old - B @ x_old
        assert loss.item() == pytest.approx(expected, rel=1e-14), (
            f"expected loss at x_old {expected}, got {loss}"
        )


# ---- BFGS ---------------------------------------------------------------------------------------


def test_bfgs_iterates_and_secant_equation():
    lr, h0 = 0.1, 2.0
    params = make_params(X0)
    opt = BFGS(params, lr=lr, h0_scale=h0)
    closure = QuadClosure(params)
    opt.step(closure)
    x1_ref = X0 - lr * h0 * grad_np(X0)
    assert_close(as_np(params), x1_ref, "BFGS x1 = x0 - lr*h0*g0")
    opt.step(closure)  # updates H with (s0, y0) first, then steps
    s0, y0 = x1_ref - X0, grad_np(x1_ref) - grad_np(X0)
    H1 = opt.state[params[0]]["H"].numpy()
    assert_close(H1 @ y0, s0, "secant equation H1 y0 = s0")
    assert_close(H1, H1.T, "H1 symmetric")
    rho = 1.0 / (s0 @ y0)
    V = I3 - rho * np.outer(y0, s0)
    H1_ref = V.T @ (h0 * I3) @ V + rho * np.outer(s0, s0)
    assert_close(H1, H1_ref, "H1 = V^T H0 V + rho s s^T")
    assert_close(as_np(params), x1_ref - lr * H1_ref @ grad_np(x1_ref), "BFGS x2")
    assert closure.calls == 2, f"BFGS: expected 1 closure call per step (2), got {closure.calls}"


def test_bfgs_returns_loss_at_current_point():
    params = make_params(X0)
    opt = BFGS(params)
    loss = opt.step(QuadClosure(params))
    expected = 0.5 * X0 @ A @ X0 - B @ X0
    assert loss.item() == pytest.approx(expected, rel=1e-14), f"expected {expected}, got {loss}"


# ---- shared contracts ---------------------------------------------------------------------------

ROUND_TRIP = [
    (LBFGS, {"lr": 1.0, "tau": 2.0, "eps": 0.1, "history": 2, "lam": 0.01}),
    (OLBFGS, {"lr": 1.0, "tau": 2.0, "eps": 0.1, "history": 2}),
    (BFGS, {"lr": 0.1, "h0_scale": 1.5}),
]


@pytest.mark.parametrize(("cls", "kw"), ROUND_TRIP, ids=lambda v: getattr(v, "__name__", ""))
def test_state_dict_round_trip_is_bitwise(cls, kw):
    params_a = make_params(X0)
    opt_a = cls(params_a, **kw)
    closure_a = QuadClosure(params_a)
    for _ in range(3):
        opt_a.step(closure_a)
    saved = copy.deepcopy(opt_a.state_dict())
    params_b = [p.detach().clone().requires_grad_() for p in params_a]
    opt_b = cls(params_b, **kw)
    opt_b.load_state_dict(saved)
    closure_b = QuadClosure(params_b)
    for _ in range(2):
        opt_a.step(closure_a)
        opt_b.step(closure_b)
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        assert torch.equal(pa, pb), f"{cls.__name__} param {i}: resumed {pb} != uninterrupted {pa}"


INVALID = [
    (LBFGS, {"lr": 0.0}, "lr"),
    (LBFGS, {"lr": -1.0}, "lr"),
    (LBFGS, {"tau": 0.0}, "tau"),
    (LBFGS, {"eps": 0.0}, "eps"),
    (LBFGS, {"history": 0}, "history"),
    (LBFGS, {"history": 2.5}, "history"),
    (LBFGS, {"lam": -0.1}, "lam"),
    (OLBFGS, {"lr": float("nan")}, "lr"),
    (OLBFGS, {"tau": -1.0}, "tau"),
    (OnlineLBFGS, {"scaling": "newest"}, "scaling"),
    (BFGS, {"lr": 0.0}, "lr"),
    (BFGS, {"h0_scale": -1.0}, "h0_scale"),
]


@pytest.mark.parametrize(("cls", "kw", "name"), INVALID)
def test_invalid_hyperparameters_raise_value_error(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        cls(make_params(X0), **kw)


@pytest.mark.parametrize("cls", [LBFGS, OLBFGS, BFGS])
def test_flat_optimizers_reject_groups_and_missing_closure(cls):
    p1, p2 = make_params(X0)
    with pytest.raises(ValueError, match="one parameter group"):
        cls([{"params": [p1]}, {"params": [p2]}])
    with pytest.raises(ValueError, match="dtype"):
        cls([p1, p2.detach().float().requires_grad_()])
    with pytest.raises(RuntimeError, match="closure"):
        cls([p1, p2]).step(None)
