"""Exact-Hessian baselines of LODO's noisy quadratic bowl (papers/lodo.md §3.1, §4.1): Newton and
the LODO code's fixed-lambda Levenberg-Marquardt.

Both need the dense Hessian of the current batch's loss. The runner passes a closure object that is
callable (zeroes grads, computes the loss, calls backward, returns the loss) and has
``closure.hessian() -> Tensor``: the (n, n) Hessian of the same batch's loss at the current
parameters, n = total number of parameter elements, flattened in parameter order as in
``optimizers.flat``. Each step calls ``closure()`` once and then ``closure.hessian()`` once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from optimizers.flat import FlatOptimizer, add_flat_
from optimizers.registry import NON_NEGATIVE, POSITIVE, OptimizerSpec, register


def _hessian(opt: torch.optim.Optimizer, closure: Callable, n: int) -> Tensor:
    hessian = getattr(closure, "hessian", None)
    if not callable(hessian):
        raise TypeError(
            f"{type(opt).__name__}.step() needs a closure with a .hessian() method returning the dense "
            "Hessian of the same batch's loss"
        )
    with torch.enable_grad():
        H = hessian()
    if tuple(H.shape) != (n, n):
        raise ValueError(f"closure.hessian() returned shape {tuple(H.shape)}, expected ({n}, {n})")
    return H.detach()


def _sym(A: Tensor) -> Tensor:
    return (A + A.mT).mul_(0.5)


def solve_symmetric(A: Tensor, b: Tensor) -> tuple[Tensor, str]:
    """Solve A x = b for symmetric A; return x and the method used.

    Cholesky when A is positive definite; otherwise LU (for an indefinite, nonsingular A this is still
    the exact solution); if LU reports an exactly singular A or gives a non-finite x, the
    minimum-norm least-squares solution pinv(A) b (``torch.linalg.pinv(hermitian=True)``; lstsq's
    CUDA driver needs full rank). Checking which case applies syncs with the device once or twice.
    """
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1), "cholesky"
    x, info = torch.linalg.solve_ex(A, b)
    if int(info) == 0 and bool(torch.isfinite(x).all()):
        return x, "lu"
    return torch.linalg.pinv(A, hermitian=True) @ b, "pinv"


class Newton(FlatOptimizer):
    """Newton's method with the exact Hessian: x <- x - lr * (H + damping * I)^{-1} g.

    LODO's Table 1 quotes "Newton 7.41" as the noisy bowl's optimum (papers/lodo.md §3.1): with
    lr = 1, damping = 0 each step lands on the current batch's minimiser c_t, the best prediction of
    c_{t+1}. H is symmetrised, (H + H^T) / 2, before the solve; the solve falls back from Cholesky to
    LU to the pseudo-inverse (``solve_symmetric``), and ``state["last_solve"]`` says which ran.
    On an indefinite H the step is the exact Newton step, which need not descend.
    """

    def __init__(self, params, lr: float = 1.0, damping: float = 0.0) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate lr: {lr} (must be > 0)")
        if not damping >= 0.0:
            raise ValueError(f"Invalid damping: {damping} (must be >= 0)")
        super().__init__(params, {"lr": lr, "damping": damping})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        group, state, loss, g = self._evaluate(closure)
        params = group["params"]
        H = _sym(_hessian(self, closure, g.numel()))
        if group["damping"] != 0.0:
            H.diagonal().add_(group["damping"])
        d, method = solve_symmetric(H, g)
        add_flat_(params, d, alpha=-group["lr"])
        state["step"] = state.get("step", 0) + 1
        state["last_solve"] = method
        return loss


class LevenbergMarquardt(FlatOptimizer):
    """The LODO code's Levenberg-Marquardt for the noisy bowl (papers/lodo.md §4.1):
    x <- x - (H^2 + lam * diag(H^2))^{-1} H g with the exact Hessian H and a FIXED lam (default 1).

    This is not the classical residual/Jacobian LM: it is LM damping applied to the Newton system
    H^2 d = H g, with no step size and no lam adaptation, exactly as the code runs it. The AMOLF
    thesis's adaptive-lambda LM (Jacobian based, lambda raised/lowered on failure/success) is a
    different, later entry. The code inverts the matrix (tf.linalg.inv); we solve the symmetrised
    system with ``solve_symmetric`` (Cholesky, else LU, else pseudo-inverse; ``state["last_solve"]``).
    """

    def __init__(self, params, lam: float = 1.0) -> None:
        if not lam >= 0.0:
            raise ValueError(f"Invalid lam: {lam} (must be >= 0)")
        super().__init__(params, {"lam": lam})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        group, state, loss, g = self._evaluate(closure)
        params = group["params"]
        H = _sym(_hessian(self, closure, g.numel()))
        H2 = _sym(H @ H)
        M = H2 + torch.diag_embed(H2.diagonal() * group["lam"])
        d, method = solve_symmetric(M, H @ g)
        add_flat_(params, d, alpha=-1.0)
        state["step"] = state.get("step", 0) + 1
        state["last_solve"] = method
        return loss


HESSIAN = frozenset({"hessian"})
register(OptimizerSpec("newton", Newton, {"lr": POSITIVE, "damping": NON_NEGATIVE}, requires=HESSIAN,
                       doc=Newton.__doc__))
register(OptimizerSpec("lm", LevenbergMarquardt, {"lam": NON_NEGATIVE}, requires=HESSIAN,
                       doc=LevenbergMarquardt.__doc__))
