"""LODO and its ablations (papers/lodo.md §1-2): sizes, initialisation, the hypergradient against finite
differences, each preconditioner's stated form, momentum, state round-trips and the §1.6 metric."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import optimizers
import tasks
from optimizers.lodo import LODO, LODODiagonal, LODOGlobal, LODOResiduals, hidden_width

CPU = torch.device("cpu")


def quadratic(n: int, seed: int = 0):
    """x, a closure for f(x) = 1/2 x^T Q x + b^T x (Q SPD), and f itself."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    q, b = a @ a.T / n + torch.eye(n, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64).requires_grad_(True)

    def f(v):
        return 0.5 * v @ q @ v + b @ v

    def make_closure(opt):
        def closure():
            opt.zero_grad()
            loss = f(x)
            loss.backward()
            return loss
        return closure

    return x, f, make_closure


def dense_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The matrix Pi with (Pi v)_j = v[perm[j]]."""
    return torch.eye(len(perm), dtype=torch.float64)[perm]


@pytest.mark.parametrize(("n", "width", "thetas"), [(2, 8, 512), (100, 204, 13_056), (5, 12, 768)])
def test_hidden_width_and_theta_count(n, width, thetas):
    assert hidden_width(n, 4) == width, f"n~ for n={n}: expected {width}, got {hidden_width(n, 4)}"
    torch.manual_seed(0)
    opt = LODO([torch.zeros(n, dtype=torch.float64, requires_grad=True)])
    assert opt.theta_count() == thetas == 64 * width, f"theta entries for n={n}: expected {thetas}, got " \
                                                      f"{opt.theta_count()}"


@pytest.mark.parametrize("n", [2, 100, 7])
def test_initial_preconditioner_is_alpha0_identity(n):
    torch.manual_seed(n)
    alpha0 = 0.37
    opt = LODO([torch.zeros(n, dtype=torch.float64, requires_grad=True)], lr=alpha0)
    eye = torch.eye(n, dtype=torch.float64)
    err = (opt.preconditioner_matvec(eye) - alpha0 * eye).abs().max().item()
    assert err < 1e-12, f"G(theta0) should be alpha0 I to 1e-12, max deviation {err:.3g}"


def test_lodo_preconditioner_equals_dense_formula_and_is_psd():
    """G = alpha0 P^T A^T A P with A = B_N Pi_N ... B_1 Pi_1, B_i = blockdiag(W^T) (row-vector blocks)."""
    torch.manual_seed(1)
    n, alpha0 = 5, 0.8
    opt = LODO([torch.zeros(n, dtype=torch.float64, requires_grad=True)], lr=alpha0, n_layers=3)
    with torch.no_grad():
        for t in opt.theta:  # leave the orthogonal initialisation, so G is no longer alpha0 I
            t.add_(0.3 * torch.randn_like(t))
    width = opt.width
    a = torch.eye(width, dtype=torch.float64)
    for blocks, perm in zip(opt.theta, opt.buffers["perms"], strict=True):
        b = torch.block_diag(*[w.detach().T for w in blocks])
        a = b @ dense_permutation(perm) @ a
    p = torch.eye(width, n, dtype=torch.float64)
    expected = alpha0 * p.T @ a.T @ a @ p
    got = opt.preconditioner_matvec(torch.eye(n, dtype=torch.float64))
    gap = (got - expected).abs().max()
    assert torch.allclose(got, expected, atol=1e-12), f"G differs from the dense formula by {gap}"
    assert torch.linalg.eigvalsh(got).min() > -1e-12, "G must be PSD"


def test_diagonal_global_and_residuals_preconditioners_have_their_stated_form():
    torch.manual_seed(2)
    n, alpha0 = 4, 0.5
    eye = torch.eye(n, dtype=torch.float64)

    def new(cls, **kw):
        return cls([torch.zeros(n, dtype=torch.float64, requires_grad=True)], lr=alpha0, **kw)

    diag = new(LODODiagonal)
    assert torch.equal(diag.preconditioner_matvec(eye), alpha0 * eye), "LODO-Diagonal must start at alpha0 I"
    d = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    with torch.no_grad():
        diag.theta[0].copy_(d)
    assert torch.allclose(diag.preconditioner_matvec(eye), alpha0 * torch.diag(d)), "LODO-Diagonal: alpha0 diag(theta)"

    glob = new(LODOGlobal)
    assert glob.theta_count() == 1, f"LODO-Global learns one scalar, got {glob.theta_count()}"
    with torch.no_grad():
        glob.theta[0].fill_(2.5)
    assert torch.allclose(glob.preconditioner_matvec(eye), alpha0 * 2.5 * eye), "LODO-Global: alpha0 theta I"

    res = new(LODOResiduals, n_layers=6)
    w, dvec = res.theta
    assert w.shape == (6, 2 * n) and dvec.shape == (2 * n,), "Residuals: n~ = 2n, one w per layer, one d"
    with torch.no_grad():
        dvec.copy_(torch.rand(2 * n, dtype=torch.float64) + 0.5)
    a = torch.eye(2 * n, dtype=torch.float64)
    for wi, perm in zip(w.detach(), res.buffers["perms"], strict=True):
        a = (torch.eye(2 * n, dtype=torch.float64) + torch.diag(wi) @ dense_permutation(perm)) @ a
    p = torch.eye(2 * n, n, dtype=torch.float64)
    expected = alpha0 * p.T @ a.T @ torch.diag(dvec.detach()) @ a @ p
    got = res.preconditioner_matvec(eye)
    assert torch.allclose(got, expected, atol=1e-12), f"Residuals G differs by {(got - expected).abs().max()}"


def test_hypergradient_matches_finite_differences_of_the_next_loss():
    """theta.grad after step t = d/dtheta f(x_{t-1} - G(theta) m_{t-1}) (one-step truncation, §1.5)."""
    torch.manual_seed(3)
    x, f, make_closure = quadratic(3)
    opt = LODO([x], lr=0.3, meta_lr=1e-3, beta=0.5, n_layers=4)
    closure = make_closure(opt)
    opt.step(closure)  # m becomes nonzero
    opt.step(closure)
    x_prev, m_prev = x.detach().clone(), opt.state["lodo"]["momentum"].clone()
    theta_prev = [t.detach().clone() for t in opt.theta]
    opt.step(closure)
    hypergrad = [t.grad.clone() for t in opt.theta]
    directions = [torch.randn_like(t) for t in theta_prev]
    analytic = sum(float((g * d).sum()) for g, d in zip(hypergrad, directions, strict=True))

    def loss_at(eps):
        with torch.no_grad():
            for t, t0, d in zip(opt.theta, theta_prev, directions, strict=True):
                t.copy_(t0 + eps * d)
            return float(f(x_prev - 0.3 * opt._apply(m_prev)))

    eps = 1e-6
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(analytic) > 1e-6, "the test needs a nonzero hypergradient"
    assert math.isclose(analytic, numeric, rel_tol=1e-6), f"hypergradient {analytic:.10g} vs FD {numeric:.10g}"


def test_first_step_is_zero_and_uses_one_loss_evaluation_per_step():
    torch.manual_seed(4)
    x, f, make_closure = quadratic(3)
    x0 = x.detach().clone()
    opt = LODO([x], lr=0.3)
    calls = []
    inner = make_closure(opt)

    def closure():
        calls.append(1)
        return inner()

    loss = opt.step(closure)
    assert torch.equal(x.detach(), x0), "m0 = 0, so the first step must not move x"
    assert float(loss.detach()) == pytest.approx(float(f(x0))), "the first logged loss is f(x0)"
    assert all(t.grad is not None and not t.grad.any() for t in opt.theta), "first hypergradient must be 0"
    opt.step(closure)
    assert len(calls) == 2, f"one loss evaluation per step expected, got {len(calls)} for 2 steps"


def test_momentum_ema_no_momentum_and_sgd_meta_optimizer():
    torch.manual_seed(5)
    x, _, make_closure = quadratic(3)
    opt = optimizers.build("lodo_no_momentum", [x], {"lr": 0.1, "meta_lr": 1e-3})
    opt.step(make_closure(opt))
    assert torch.equal(opt.state["lodo"]["momentum"], x.grad), "beta = 0: m_t must equal g_t"

    x, _, make_closure = quadratic(3)
    opt = optimizers.build("lodo", [x], {"lr": 0.1, "meta_lr": 1e-3, "beta": 0.8})
    closure = make_closure(opt)
    opt.step(closure)
    g1 = x.grad.clone()
    opt.step(closure)
    expected = 0.8 * 0.2 * g1 + 0.2 * x.grad
    assert torch.allclose(opt.state["lodo"]["momentum"], expected), "m = beta m + (1 - beta) g"

    x, _, make_closure = quadratic(3)
    opt = optimizers.build("lodo_sgd", [x], {"lr": 0.1, "meta_lr": 0.05, "beta": 0.5})
    closure = make_closure(opt)
    opt.step(closure)
    before = [t.detach().clone() for t in opt.theta]
    opt.step(closure)
    for t, t0 in zip(opt.theta, before, strict=True):
        assert torch.allclose(t.detach(), t0 - 0.05 * t.grad), "LODO-SGD: theta <- theta - meta_lr * hypergradient"


def test_float32_option_and_state_dict_round_trip():
    torch.manual_seed(6)
    x, _, make_closure = quadratic(4)
    opt = LODO([x], lr=0.2, meta_lr=1e-2, float64=False)
    assert all(t.dtype == torch.float32 for t in opt.theta), "float64=False keeps theta in float32"
    closure = make_closure(opt)
    for _ in range(3):
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())  # state_dict() holds live references, as torch.optim's does
    x_saved = x.detach().clone()
    for _ in range(3):
        opt.step(closure)
    continued = x.detach().clone()

    with torch.no_grad():
        x.copy_(x_saved)
    torch.manual_seed(99)  # a different seed: everything must come from the state dict
    other = LODO([x], lr=0.2, meta_lr=1e-2, float64=False)
    other.load_state_dict(saved)
    closure = make_closure(other)
    for _ in range(3):
        other.step(closure)
    assert torch.equal(x.detach(), continued), "a reloaded LODO must continue exactly"


def test_hessian_error_at_start_matches_formula_and_falls_with_training():
    """§1.6/§7.6: at theta0 the metric estimates sqrt(mean_i (1 - alpha0 lambda_i)^2) (0.8833 at alpha0 = 1)."""
    from runners.loop import train

    task = tasks.get("noisy_quadratic")(seed=0, device=CPU, dtype=torch.float64)
    torch.manual_seed(0)
    opt = optimizers.build("lodo", task.parameters(), {"lr": 1.0, "meta_lr": 9.6e-4, "beta": 0.195})
    expected = float((1 - task.eigenvalues).square().mean().sqrt())
    assert expected == pytest.approx(0.8833, abs=1e-4)
    result = train(task, opt, {"steps": 400, "eval_every": 200})  # the runner hands the task its optimizer
    errors = result.evals["hessian_error"].tolist()
    assert errors[0] == pytest.approx(expected, rel=0.05), f"expected about {expected:.4f} at step 0, got {errors}"
    assert errors[-1] < errors[0] - 0.01, f"the Hessian-approximation error should fall: {errors}"


def test_lodo_on_rosenbrock_reaches_the_papers_regime():
    """Table 6 Rosenbrock hyperparameters: LODO's mean loss over steps 181..199 is O(1e-3) (paper
    0.001040 +- 0.0000214), far below the start (3.085)."""
    from runners.loop import train
    from scripts.tables import window_mean

    task = tasks.get("rosenbrock")(seed=0, device=CPU, dtype=torch.float64)
    torch.manual_seed(0)
    opt = optimizers.build("lodo", task.parameters(), {"lr": 0.2946, "meta_lr": 0.0001394, "beta": 0.897})
    curve = train(task, opt, {"steps": 200}).curve
    assert curve["loss"].iloc[0] == pytest.approx(3.085)
    value = window_mean(curve, "eval", 200)
    assert 2e-4 < value < 5e-3, f"expected a window mean near 1e-3, got {value:.3g}"


@pytest.mark.parametrize("name", ["lodo", "lodo_diagonal", "lodo_global", "lodo_residuals", "lodo_no_momentum",
                                  "lodo_sgd"])
def test_every_variant_runs_and_rejects_bad_hyperparameters(name):
    torch.manual_seed(7)
    x, _, make_closure = quadratic(3)
    opt = optimizers.build(name, [x], {"lr": 0.1, "meta_lr": 1e-3})
    for _ in range(3):
        loss = opt.step(make_closure(opt))
    assert math.isfinite(float(loss))
    with pytest.raises(ValueError, match="meta_lr"):
        optimizers.build(name, [x], {"lr": 0.1, "meta_lr": -1.0})
