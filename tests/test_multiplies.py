"""Tests for runners/multiplies.py: counted multiplies against hand-computed counts."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from runners.multiplies import MultiplyCounter, count_multiplies

B, N_IN, N_OUT = 32, 784, 1000


def _check(expected: int, got: int, what: str) -> None:
    assert got == expected, f"{what}: expected {expected} multiplies, got {got}"


def _count(fn) -> int:
    return count_multiplies(fn)[1]


def test_linear_forward():
    lin, x = nn.Linear(N_IN, N_OUT), torch.randn(B, N_IN)
    _check(B * N_IN * N_OUT, _count(lambda: lin(x)), "Linear forward (addmm)")


def test_linear_forward_backward():
    lin, x = nn.Linear(N_IN, N_OUT), torch.randn(B, N_IN, requires_grad=True)
    # forward addmm B*784*1000; backward mm grad_input (B x 1000)(1000 x 784) and
    # mm grad_weight (1000 x B)(B x 784); the bias gradient and the loss are sums.
    _check(3 * B * N_IN * N_OUT, _count(lambda: lin(x).sum().backward()), "Linear fwd+bwd")
    x.requires_grad_(False)  # no grad_input: forward + grad_weight only
    _check(2 * B * N_IN * N_OUT, _count(lambda: lin(x).sum().backward()), "Linear fwd+bwd, x frozen")


def test_matmul_dispatch_targets():
    a, b = torch.randn(3), torch.randn(3)
    m, n = torch.randn(4, 3), torch.randn(3, 5)
    c, d = torch.randn(2, 4, 3), torch.randn(2, 3, 5)
    cases = {
        "dot 1-D @ 1-D": (lambda: a @ b, 3),
        "mv 2-D @ 1-D": (lambda: m @ a, 4 * 3),
        "mm 1-D @ 2-D": (lambda: a @ n, 3 * 5),
        "mm 2-D @ 2-D": (lambda: m @ n, 4 * 3 * 5),
        "bmm 3-D @ 3-D": (lambda: c @ d, 2 * 4 * 3 * 5),
        "mm 3-D @ 2-D": (lambda: c @ n, 2 * 4 * 3 * 5),
        "einsum -> bmm": (lambda: torch.einsum("ij,jk->ik", m, n), 4 * 3 * 5),
        "addmm beta=2 alpha=3": (lambda: torch.addmm(torch.randn(5), m, n, beta=2, alpha=3), 60 + 2 * 20),
    }
    for what, (fn, expected) in cases.items():
        _check(expected, _count(fn), what)


def test_conv2d_forward_and_depthwise():
    x = torch.randn(2, 3, 16, 16)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # out.numel() * (C_in/groups) * kh * kw
    _check(2 * 8 * 16 * 16 * 3 * 3 * 3, _count(lambda: conv(x)), "Conv2d 3->8 forward")
    dw, xd = nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.randn(2, 8, 16, 16)
    _check(2 * 8 * 16 * 16 * 1 * 3 * 3, _count(lambda: dw(xd)), "depthwise Conv2d forward")
    grouped = nn.Conv2d(8, 4, 3, groups=2)
    _check(2 * 4 * 14 * 14 * 4 * 3 * 3, _count(lambda: grouped(xd)), "Conv2d groups=2 forward")


def test_conv2d_backward():
    conv, x = nn.Conv2d(3, 8, 3, padding=1), torch.randn(2, 3, 16, 16, requires_grad=True)
    fwd = 2 * 8 * 16 * 16 * 3 * 3 * 3
    _check(3 * fwd, _count(lambda: conv(x).sum().backward()), "Conv2d fwd + grad_input + grad_weight")
    x.requires_grad_(False)
    _check(2 * fwd, _count(lambda: conv(x).sum().backward()), "Conv2d fwd + grad_weight")


def _params_with_grads() -> list[torch.Tensor]:
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def test_adam_step():
    # torch/optim/adam.py, _multi_tensor_adam (not capturable, no weight decay, no amsgrad), per element:
    #   _foreach_lerp_(m, g, 1-beta1)                     1
    #   _foreach_mul_(v, beta2)                           1
    #   _foreach_addcmul_(v, g, g, value=1-beta2)         2 (g*g, *value)
    #   _foreach_sqrt(v)                                  0
    #   _foreach_div_(sqrt_v, bias_correction2_sqrt)      1
    #   _foreach_add_(denom, eps)                         0
    #   _foreach_addcdiv_(p, m, denom, -step_size)        2 (m/denom, *step_size)
    # bias corrections are Python floats; the step counter add is free.
    numel = 5 * 3 + 7
    for foreach in (True, False):  # the single-tensor path must cost the same
        opt = torch.optim.Adam(_params_with_grads(), foreach=foreach)
        for step in (1, 2):
            _check(7 * numel, _count(opt.step), f"Adam(foreach={foreach}) step {step}")


def test_sgd_momentum_step():
    # torch/optim/sgd.py, _multi_tensor_sgd, dampening 0, per element:
    #   step 1: buf = clone(g) (0); _foreach_add_(p, buf, alpha=-lr) (1)
    #   step 2: _foreach_mul_(buf, momentum) (1); _foreach_add_(buf, g, alpha=1) (0); p update (1)
    numel = 5 * 3 + 7
    opt = torch.optim.SGD(_params_with_grads(), lr=0.1, momentum=0.9, foreach=True)
    _check(numel, _count(opt.step), "SGD momentum step 1")
    _check(2 * numel, _count(opt.step), "SGD momentum step 2")


def test_elementwise():
    x, y = torch.randn(4, 1, 3), torch.randn(5, 3)
    cases = {
        "x*y broadcast to (4,5,3)": (lambda: x * y, 4 * 5 * 3),
        "x/2": (lambda: x / 2, 12),
        "x*2.5": (lambda: x * 2.5, 12),
        "x+y": (lambda: x + y, 0),
        "exp": (lambda: x.exp(), 0),
        "sqrt": (lambda: x.abs().sqrt(), 0),
        "rsqrt": (lambda: x.abs().rsqrt(), 12),
        "x**2": (lambda: x**2, 12),
        "x**0.5": (lambda: x.abs() ** 0.5, 0),
        "square": (lambda: x.square(), 12),
        "lerp": (lambda: torch.lerp(x, x, 0.3), 12),
        "addcdiv value=1": (lambda: torch.addcdiv(x, x, x), 12),
        "mean over dim 2": (lambda: x.mean(2), 4),
        "sum": (lambda: x.sum(), 0),
        "integer mul": (lambda: torch.arange(6) * 3, 0),
        "in-place mul_": (lambda: x.clone().mul_(y[0]), 12),
        "out= mul": (lambda: torch.mul(x, x, out=torch.empty(4, 1, 3)), 12),
        "sigmoid": (lambda: torch.sigmoid(x), 0),
    }
    for what, (fn, expected) in cases.items():
        _check(expected, _count(fn), what)


def test_linalg_formulas():
    n, k = 6, 2
    a = torch.randn(n, n, dtype=torch.float64)
    spd, rhs = a @ a.T + n * torch.eye(n, dtype=torch.float64), torch.randn(n, k, dtype=torch.float64)
    _check(n**3 // 3, _count(lambda: torch.linalg.cholesky(spd)), "Cholesky n^3/3")
    _check(2 * n**3 // 3 + k * n**2, _count(lambda: torch.linalg.solve(spd, rhs)), "solve: LU + n^2 per rhs")
    _check(n**2 // 2 * k, _count(lambda: torch.linalg.solve_triangular(spd, rhs, upper=False)), "trsm")


def test_hessian_under_torch_func():
    a = torch.randn(4, 4)
    a = a @ a.T

    def quadratic(v):
        return 0.5 * v @ a @ v

    v = torch.randn(4)
    for what, fn in {
        "hessian": torch.func.hessian(quadratic),
        "jacfwd(jacrev)": torch.func.jacfwd(torch.func.jacrev(quadratic)),
    }.items():
        h, count = count_multiplies(fn, v)
        assert torch.allclose(h, 0.5 * (a + a.T), atol=1e-5), f"{what}: wrong Hessian {h}"
        assert count > 0, f"{what}: expected a positive count, got {count}"


def test_nested_counters_and_uncounted():
    m, n = torch.randn(4, 3), torch.randn(3, 5)
    with MultiplyCounter() as outer:
        with MultiplyCounter() as inner:
            m @ n
        nn.BatchNorm1d(5)(torch.randn(8, 5))
    _check(60, inner.total, "inner counter")
    _check(60, outer.total, "outer counter sees the inner ops")
    assert dict(outer.by_op) == {"aten.mm": 60}, f"expected by_op {{'aten.mm': 60}}, got {dict(outer.by_op)}"
    assert "aten.native_batch_norm" in outer.uncounted, f"expected batch norm uncounted, got {outer.uncounted}"


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12))
def test_mm_property(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    _check(m * k * n, _count(lambda: a @ b), f"mm ({m}x{k})@({k}x{n})")
    with MultiplyCounter() as mc:
        a @ b
        a @ b
    _check(2 * m * k * n, mc.total, "two mm calls")
