"""Tests for optimizers/second_order.py (Newton, the LODO code's Levenberg-Marquardt).

The test problem is f(x) = 1/2 x^T A x - b^T x + c/4 sum(x_i^4) on x split over two parameters;
its gradient A x - b + c x^3 and Hessian A + 3c diag(x^2) are written out by hand in NumPy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from optimizers.second_order import LevenbergMarquardt, Newton, solve_symmetric

A_PD = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
B = np.array([1.0, -2.0, 0.5])
X0 = np.array([1.0, 2.0, -1.0])


def make_params(x: np.ndarray) -> list[torch.Tensor]:
    xt = torch.tensor(x, dtype=torch.float64)
    return [xt[:2].clone().requires_grad_(), xt[2:].reshape(1, 1).clone().requires_grad_()]


def as_np(params: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in params]).numpy()


def grad_np(x, A=A_PD, b=B, c=0.0):
    return A @ x - b + c * x**3


def hess_np(x, A=A_PD, c=0.0):
    return A + 3.0 * c * np.diag(x**2)


class QuadClosure:
    """The runner's closure contract: callable (zero grads, loss, backward, return loss) plus
    ``hessian()`` (dense Hessian of the same loss at the current parameters, via autograd)."""

    def __init__(self, params, A=A_PD, b=B, c=0.0) -> None:
        self.params = params
        self.A, self.b, self.c = torch.tensor(A), torch.tensor(b), c
        self.calls = 0
        self.hessian_calls = 0

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ self.A @ x - self.b @ x + 0.25 * self.c * (x**4).sum()

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        for p in self.params:
            p.grad = None
        loss = self.f(torch.cat([p.reshape(-1) for p in self.params]))
        loss.backward()
        return loss

    def hessian(self) -> torch.Tensor:
        self.hessian_calls += 1
        x = torch.cat([p.detach().reshape(-1) for p in self.params])
        return torch.autograd.functional.hessian(self.f, x)


def assert_close(got, expected, what: str, rtol: float = 1e-12) -> None:
    assert np.allclose(got, expected, rtol=rtol, atol=1e-13), f"{what}: expected {expected}, got {got}"


# ---- Newton -------------------------------------------------------------------------------------


def test_newton_reaches_quadratic_minimiser_in_one_step():
    params = make_params(X0)
    opt = Newton(params)
    closure = QuadClosure(params)
    opt.step(closure)
    x_star = np.linalg.solve(A_PD, B)
    assert_close(as_np(params), x_star, "Newton (lr=1) after one step")
    assert opt.state[params[0]]["last_solve"] == "cholesky"
    opt.step(closure)
    assert_close(as_np(params), x_star, "Newton stays at the minimiser")


def test_newton_lr_and_damping_step_formula():
    lr, damping, c = 0.5, 0.3, 0.7
    params = make_params(X0)
    opt = Newton(params, lr=lr, damping=damping)
    closure = QuadClosure(params, c=c)
    x = X0.copy()
    for k in range(2):
        opt.step(closure)
        x = x - lr * np.linalg.solve(hess_np(x, c=c) + damping * np.eye(3), grad_np(x, c=c))
        assert_close(as_np(params), x, f"Newton x{k + 1} = x - lr (H + damping I)^-1 g")


def test_newton_indefinite_uses_lu_and_singular_uses_pinv():
    A_indef = np.array([[2.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    params = make_params(X0)
    opt = Newton(params)
    opt.step(QuadClosure(params, A=A_indef))
    assert_close(as_np(params), np.linalg.solve(A_indef, B), "Newton on indefinite H goes to the saddle")
    assert opt.state[params[0]]["last_solve"] == "lu"

    A_sing = np.diag([2.0, 1.0, 0.0])
    params = make_params(X0)
    opt = Newton(params)
    opt.step(QuadClosure(params, A=A_sing))
    expected = X0 - np.linalg.pinv(A_sing) @ grad_np(X0, A=A_sing)
    assert_close(as_np(params), expected, "Newton on singular H uses the pseudo-inverse step")
    assert opt.state[params[0]]["last_solve"] == "pinv"


def test_solve_symmetric_matches_numpy():
    M = torch.tensor(A_PD) @ torch.tensor(A_PD)
    x, method = solve_symmetric(M, torch.tensor(B))
    assert method == "cholesky", f"expected cholesky for a PD matrix, got {method}"
    assert_close(x.numpy(), np.linalg.solve(M.numpy(), B), "solve_symmetric")


# ---- Levenberg-Marquardt ------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_lm_step_matches_formula(lam):
    c = 0.7
    params = make_params(X0)
    opt = LevenbergMarquardt(params, lam=lam)
    closure = QuadClosure(params, c=c)
    x = X0.copy()
    for k in range(2):
        opt.step(closure)
        H, g = hess_np(x, c=c), grad_np(x, c=c)
        H2 = H @ H
        x = x - np.linalg.inv(H2 + lam * np.diag(np.diag(H2))) @ H @ g
        assert_close(as_np(params), x, f"LM(lam={lam}) x{k + 1} = x - (H^2 + lam diag(H^2))^-1 H g")


def test_lm_with_zero_lambda_is_newton_on_a_quadratic():
    params = make_params(X0)
    LevenbergMarquardt(params, lam=0.0).step(QuadClosure(params))
    assert_close(as_np(params), np.linalg.solve(A_PD, B), "LM(lam=0) after one step", rtol=1e-10)


# ---- shared contracts ---------------------------------------------------------------------------

CASES = [(Newton, {"lr": 0.5, "damping": 0.1}), (LevenbergMarquardt, {"lam": 1.0})]


@pytest.mark.parametrize(("cls", "kw"), CASES, ids=["Newton", "LevenbergMarquardt"])
def test_one_closure_and_one_hessian_call_per_step(cls, kw):
    params = make_params(X0)
    opt = cls(params, **kw)
    closure = QuadClosure(params, c=0.7)
    for k in range(1, 4):
        x_old = as_np(params)
        loss = opt.step(closure)
        assert (closure.calls, closure.hessian_calls) == (k, k), (
            f"expected {k} closure and {k} hessian calls, got {closure.calls} and {closure.hessian_calls}"
        )
        expected = 0.5 * x_old @ A_PD @ x_old - B @ x_old + 0.25 * 0.7 * (x_old**4).sum()
        assert loss.item() == pytest.approx(expected, rel=1e-14), f"expected loss {expected}, got {loss}"


@pytest.mark.parametrize(("cls", "kw"), CASES, ids=["Newton", "LevenbergMarquardt"])
def test_state_dict_round_trip_is_bitwise(cls, kw):
    params_a = make_params(X0)
    opt_a = cls(params_a, **kw)
    closure_a = QuadClosure(params_a, c=0.7)
    for _ in range(3):
        opt_a.step(closure_a)
    saved = copy.deepcopy(opt_a.state_dict())
    params_b = [p.detach().clone().requires_grad_() for p in params_a]
    opt_b = cls(params_b, **kw)
    opt_b.load_state_dict(saved)
    assert opt_b.state[params_b[0]]["step"] == 3, (
        f"expected step 3 after load, got {opt_b.state[params_b[0]]}"
    )
    closure_b = QuadClosure(params_b, c=0.7)
    for _ in range(2):
        opt_a.step(closure_a)
        opt_b.step(closure_b)
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        assert torch.equal(pa, pb), f"{cls.__name__} param {i}: resumed {pb} != uninterrupted {pa}"


INVALID = [
    (Newton, {"lr": 0.0}, "lr"),
    (Newton, {"lr": float("nan")}, "lr"),
    (Newton, {"damping": -1e-3}, "damping"),
    (LevenbergMarquardt, {"lam": -1.0}, "lam"),
    (LevenbergMarquardt, {"lam": float("nan")}, "lam"),
]


@pytest.mark.parametrize(("cls", "kw", "name"), INVALID)
def test_invalid_hyperparameters_raise_value_error(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        cls(make_params(X0), **kw)


@pytest.mark.parametrize("cls", [Newton, LevenbergMarquardt])
def test_closure_contract_errors(cls):
    params = make_params(X0)
    opt = cls(params)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step(None)
    plain = QuadClosure(params)
    with pytest.raises(TypeError, match="hessian"):
        opt.step(plain.__call__)  # a bound method has no .hessian attribute

    class WrongShape(QuadClosure):
        def hessian(self):
            return torch.eye(2, dtype=torch.float64)

    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        opt.step(WrongShape(params))
    with pytest.raises(ValueError, match="one parameter group"):
        cls([{"params": [params[0]]}, {"params": [params[1]]}])
