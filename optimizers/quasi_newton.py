"""Quasi-Newton baselines of LODO (papers/lodo.md §4.1): online L-BFGS, O-LBFGS and full BFGS.

All three work on the flattened parameter vector (``optimizers.flat``) and keep their state in
``self.state[first parameter]``, as ``torch.optim.LBFGS`` does, so ``state_dict()`` round-trips.
They support one parameter group only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from optimizers.flat import FlatOptimizer, add_flat_, flat_grad
from optimizers.registry import COUNT, NON_NEGATIVE, POSITIVE, OptimizerSpec, register

_SCALINGS = ("oldest", "average")


def _two_loop(g: Tensor, S: Tensor, Y: Tensor, sy: Tensor, yy: Tensor, t: int, scaling: str) -> Tensor:
    """p = -H_t g by the two-loop recursion over the k = min(t, m) stored pairs (ring buffer rows).

    Row (t - 1) % m is the newest pair, row (t - k) % m the oldest. ``sy`` and ``yy`` hold s_i^T y_i
    and y_i^T y_i per row, so the initial scaling is one batched expression.
    """
    m = S.shape[0]
    k = min(t, m)
    order = [(t - 1 - i) % m for i in range(k)]  # newest first
    q = g.neg()
    alphas = []
    for j in order:
        a = torch.dot(S[j], q) / sy[j]
        q.addcmul_(Y[j], a, value=-1.0)
        alphas.append(a)
    newest, oldest = order[0], order[-1]
    if scaling == "oldest":
        # The LODO code's quirk: s of the OLDEST pair with y of the NEWEST (papers/lodo.md §4.1).
        gamma = torch.dot(S[oldest], Y[newest]) / yy[newest]
    else:
        # O-LBFGS (Schraudolph et al. 2007, §3.3): buffer average of s_i^T y_i / y_i^T y_i.
        # Rows 0..k-1 are exactly the filled rows (the ring fills from row 0).
        gamma = (sy[:k] / yy[:k]).mean()
    q.mul_(gamma)
    for j, a in zip(reversed(order), reversed(alphas), strict=True):
        b = torch.dot(Y[j], q) / sy[j]
        q.addcmul_(S[j], a - b)
    return q


class OnlineLBFGS(FlatOptimizer):
    """Stochastic online L-BFGS without line search (Schraudolph, Yu & Günter, AISTATS 2007: Alg. 1
    with the §3.2 stochastic changes and the first paragraph of §3.3), as the LODO code runs it
    ("L-BFGS-no-line-search" / O-LBFGS, papers/lodo.md §4.1).

    Per step t = 0, 1, ...: g = grad at x on the current batch; p = -eps * g if the buffer is empty,
    else p = -H_t g by the two-loop recursion (Nocedal & Wright 2006, Alg. 7.4) with H_0 = gamma * I;
    s_t = eta_t * p with eta_t = lr * tau / (tau + t); x += s_t; y_t = grad(x + s_t) - g + lam * s_t on
    the SAME batch. ``closure`` is therefore called twice per step (the runner re-evaluates the same
    batch; the second call must not draw a new one) and ``step`` returns the first loss, at the old x.

    ``scaling="oldest"`` is the LODO code's L-BFGS: gamma = s_oldest^T y_newest / y_newest^T y_newest
    (a quirk of the code, kept on purpose). ``scaling="average"`` is O-LBFGS: gamma = mean over the
    buffer of s_i^T y_i / y_i^T y_i. Deliberate choices, following the LODO code:
    s_t is stored as the intended step eta_t * p (not the realised x_new - x_old); pairs with
    s^T y <= 0 are NOT skipped (Schraudolph et al. skip none; they add lam * s_t to y_t to keep
    s^T y > 0 on convex losses), so a non-convex or round-off-dominated pair can give a bad or
    non-finite step, which the runner records as a divergence. In float32 a first step eps * eta_0 * g
    below the parameters' resolution leaves x unchanged, y = 0, and the next step is NaN, as in the
    official code; tune eps accordingly. eta_t counts iterations (2 gradient evaluations each).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        tau: float = 1e4,
        eps: float = 1e-10,
        history: int = 48,
        lam: float = 0.0,
        scaling: str = "oldest",
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate lr (eta0): {lr} (must be > 0)")
        if not tau > 0.0:
            raise ValueError(f"Invalid tau: {tau} (must be > 0)")
        if not eps > 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be > 0)")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"Invalid history: {history!r} (must be an integer >= 1)")
        if not lam >= 0.0:
            raise ValueError(f"Invalid lam: {lam} (must be >= 0)")
        if scaling not in _SCALINGS:
            raise ValueError(f"Invalid scaling: {scaling!r} (must be one of {_SCALINGS})")
        defaults = {"lr": lr, "tau": tau, "eps": eps, "history": history, "lam": lam, "scaling": scaling}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        group, state, loss, g = self._evaluate(closure)
        params = group["params"]
        t = state.get("step", 0)
        if "S" not in state:
            m = group["history"]
            state["S"] = g.new_zeros(m, g.numel())
            state["Y"] = g.new_zeros(m, g.numel())
            state["sy"] = g.new_zeros(m)
            state["yy"] = g.new_zeros(m)
        S, Y, sy, yy = state["S"], state["Y"], state["sy"], state["yy"]

        if t == 0:
            p = g.mul(-group["eps"])
        else:
            p = _two_loop(g, S, Y, sy, yy, t, group["scaling"])
        s = p.mul_(group["lr"] * group["tau"] / (group["tau"] + t))
        add_flat_(params, s)

        with torch.enable_grad():
            closure()  # same batch, at x + s
        y = flat_grad(params).sub_(g)
        if group["lam"] != 0.0:
            y.add_(s, alpha=group["lam"])

        j = t % S.shape[0]
        S[j] = s
        Y[j] = y
        sy[j] = torch.dot(s, y)
        yy[j] = torch.dot(y, y)
        state["step"] = t + 1
        return loss


class LBFGS(OnlineLBFGS):
    """The LODO code's "L-BFGS-no-line-search": ``OnlineLBFGS`` with the oldest-s/newest-y initial
    scaling (papers/lodo.md §4.1). lr is eta0; lam (default 0, as the code) is Schraudolph's y += lam*s."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        tau: float = 1e4,
        eps: float = 1e-10,
        history: int = 48,
        lam: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, tau=tau, eps=eps, history=history, lam=lam, scaling="oldest")


class OLBFGS(OnlineLBFGS):
    """O-LBFGS (Schraudolph et al. 2007, §3.3) as the LODO code runs it: ``OnlineLBFGS`` with the
    buffer-average initial scaling and lam = 0 (papers/lodo.md §4.1). lr is eta0."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        tau: float = 1e4,
        eps: float = 1e-10,
        history: int = 48,
    ) -> None:
        super().__init__(params, lr=lr, tau=tau, eps=eps, history=history, lam=0.0, scaling="average")


def _bfgs_inverse_update_(H: Tensor, s: Tensor, y: Tensor) -> None:
    """In place: H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T, rho = 1 / s^T y
    (Nocedal & Wright 2006, Eq. 6.17), expanded as the LODO code writes it:
    H + (s^T y + y^T H y) / (s^T y)^2 s s^T - (H y s^T + s y^T H) / s^T y."""
    sy = torch.dot(s, y)
    Hy = H @ y
    c = (sy + torch.dot(y, Hy)) / sy**2
    u = Hy.div_(sy)  # H y / s^T y
    H.add_(torch.outer(s, s * c - u)).sub_(torch.outer(u, s))


class BFGS(FlatOptimizer):
    """Full inverse-Hessian BFGS with a fixed step (papers/lodo.md §4.1; Nocedal & Wright 2006,
    Eq. 6.17 for the update): x <- x - lr * H g, H_0 = h0_scale * I.

    One closure call per step. The pair of step k is s = x_{k+1} - x_k (= -lr H_k g_k) and
    y = g_{k+1} - g_k, where g_{k+1} comes from the NEXT step's closure call (a new batch, as in the
    LODO code); H is updated at the start of that next step, before the new direction is computed.
    ``step`` returns the loss at the current x. Deliberate deviations from the LODO code: it ran BFGS
    only on the noisy bowl with H in float32; we keep the task's dtype. As in the code, pairs with
    s^T y <= 0 are not skipped.
    """

    def __init__(self, params, lr: float = 0.01, h0_scale: float = 1.0) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate lr: {lr} (must be > 0)")
        if not h0_scale > 0.0:
            raise ValueError(f"Invalid h0_scale: {h0_scale} (must be > 0)")
        super().__init__(params, {"lr": lr, "h0_scale": h0_scale})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        group, state, loss, g = self._evaluate(closure)
        params = group["params"]
        if "H" not in state:
            state["H"] = torch.eye(g.numel(), dtype=g.dtype, device=g.device).mul_(group["h0_scale"])
            state["step"] = 0
        else:
            _bfgs_inverse_update_(state["H"], state["prev_s"], g - state["prev_g"])
        s = (state["H"] @ g).mul_(-group["lr"])
        add_flat_(params, s)
        state["prev_s"] = s
        state["prev_g"] = g
        state["step"] += 1
        return loss


LBFGS_SCHEMA = {"lr": POSITIVE, "tau": POSITIVE, "eps": POSITIVE, "history": COUNT}
register(OptimizerSpec("lbfgs", LBFGS, {**LBFGS_SCHEMA, "lam": NON_NEGATIVE}, doc=LBFGS.__doc__))
register(OptimizerSpec("olbfgs", OLBFGS, LBFGS_SCHEMA, doc=OLBFGS.__doc__))
register(OptimizerSpec("bfgs", BFGS, {"lr": POSITIVE, "h0_scale": POSITIVE}, requires=frozenset({"dense_curvature"}),
                      doc=BFGS.__doc__))  # an n x n inverse-Hessian estimate
