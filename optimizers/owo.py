"""Building blocks of the AMOLF thesis's one-hidden-layer MLP (papers/amolf.md §1, §2.1): the OLS
solver, net-control initialisation, OWO (output weight optimisation) and the HWO direction.

The network: augmented inputs x_p (N+1 values, the constant 1 in column ``bias_col``), input weights
W (N_h x (N+1)), sigmoid hidden outputs O_p = f(W x_p), outputs y_p = Wo [x_p; O_p] with
Wo = [W_oi : W_oh] (M x N_u, N_u = N+1+N_h: bypass weights first, then hidden-to-output weights).
The error is the thesis's MSE: summed over outputs, averaged over patterns (eq. 2.3).

Everything is float64 and vectorised over patterns (one GEMM per product); the only loop is in
``ols_solve``, one Cholesky per *dropped* basis function. In code, ``hid`` is the thesis's O (the
hidden outputs, N_v x N_h) and ``fp`` its derivative f' = O (1 - O).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

OLS_THRESHOLD = 1e-12  # E2 = E1^2 with E1 = 1e-6 (code OLS.m): absolute threshold on a squared residual norm


def ols_factor(R: Tensor, threshold: float = OLS_THRESHOLD) -> tuple[Tensor | None, Tensor]:
    """The thesis's OLS (code ``OLS.m``; papers/amolf.md §2.1) as a factorisation: a Gram-Schmidt
    orthonormalisation of the basis functions in column order, where a basis function whose squared
    residual norm (the Cholesky pivot) falls below ``threshold`` is dropped (weight 0).

    The column-ordered Cholesky of the kept columns is exactly that orthonormalisation, so we factor
    with LAPACK, find the first pivot below the threshold (or the first failure), drop that column
    and factor again: one factorisation per dropped column, none per kept one. Returns (the kept
    columns, or None for all, and their Cholesky factor)."""
    keep: Tensor | None = None
    while True:
        L, info = torch.linalg.cholesky_ex(R if keep is None else R[keep][:, keep])
        failed = int(info)  # 0, or 1 + the first column whose pivot is not positive
        size = L.shape[-1]
        small = (L.diagonal()[: failed - 1 if failed else size].square() < threshold).nonzero()
        drop = int(small[0]) if small.numel() else failed - 1
        if drop < 0:
            return keep, L
        if keep is None:
            keep = torch.arange(R.shape[-1], device=R.device)
        keep = torch.cat([keep[:drop], keep[drop + 1:]])
        if not keep.numel():
            return keep, L.new_zeros(0, 0)


def ols_apply(factor: tuple[Tensor | None, Tensor], C: Tensor) -> Tensor:
    """Solve with a factor from ``ols_factor``; C of shape (n,) or (n, m); dropped rows get 0."""
    keep, L = factor
    rhs = C.unsqueeze(-1) if C.dim() == 1 else C
    if keep is None:
        w = torch.cholesky_solve(rhs, L)
    else:
        w = torch.zeros_like(rhs)
        if keep.numel():
            w[keep] = torch.cholesky_solve(rhs[keep], L)
    return w.squeeze(-1) if C.dim() == 1 else w


def ols_solve(R: Tensor, C: Tensor, threshold: float = OLS_THRESHOLD) -> Tensor:
    """Solve R w = C (R symmetric non-negative definite) with the thesis's OLS: ``ols_factor`` then
    ``ols_apply``. Near-linearly-dependent later columns get weight 0; it is a pivot-thresholded
    Cholesky solve, not a pseudo-inverse."""
    return ols_apply(ols_factor(R, threshold), C)


def sigmoid(n: Tensor) -> Tensor:
    """f(n) = 1 / (1 + e^-n) (code ``act.m``)."""
    return torch.sigmoid(n)


@dataclass
class MLPProblem:
    """What the structure-aware trainers need from a task (``task.mlp``): the training patterns and
    the two weight tensors, which are the task's parameters (updated in place).

    ``x``: augmented, mean-centred training inputs (N_v, N+1); ``t``: targets (N_v, M);
    ``W``: input weights (N_h, N+1); ``Wo``: bypass + output weights (M, N+1+N_h).
    Products that do not depend on the weights (R_in = x^T x / N_v, x^T t / N_v, the HWO factor)
    are computed once and cached here.
    """

    x: Tensor
    t: Tensor
    W: Tensor
    Wo: Tensor
    bias_col: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """(N, M, N_h, N_v)."""
        return self.x.shape[1] - 1, self.t.shape[1], self.W.shape[0], self.x.shape[0]

    @property
    def r_in(self) -> Tensor:
        if "r_in" not in self._cache:
            self._cache["r_in"] = self.x.T @ self.x / self.x.shape[0]
        return self._cache["r_in"]

    @property
    def c_in(self) -> Tensor:
        if "c_in" not in self._cache:
            self._cache["c_in"] = self.x.T @ self.t / self.x.shape[0]
        return self._cache["c_in"]

    def hidden(self, W: Tensor | None = None) -> Tensor:
        """O = f(x W^T), (N_v, N_h)."""
        return sigmoid(self.x @ (self.W if W is None else W).detach().T)

    def outputs(self, hid: Tensor, Wo: Tensor | None = None) -> Tensor:
        """y = x W_oi^T + O W_oh^T, (N_v, M)."""
        Wo = (self.Wo if Wo is None else Wo).detach()
        n1 = self.x.shape[1]
        return torch.addmm(self.x @ Wo[:, :n1].T, hid, Wo[:, n1:].T)


def owo_weights(problem: MLPProblem, hid: Tensor, threshold: float = OLS_THRESHOLD) -> Tensor:
    """Output weights Wo (M x N_u) of OWO (thesis §2.2.1, §3.1): R Wo^T = C with
    R = X^T X / N_v, C = X^T t / N_v, X = [x, O], solved by ``ols_solve``. The x^T x and x^T t
    blocks are constant and cached."""
    nv = hid.shape[0]
    xo = problem.x.T @ hid / nv
    R = torch.cat([torch.cat([problem.r_in, xo], 1), torch.cat([xo.T, hid.T @ hid / nv], 1)], 0)
    C = torch.cat([problem.c_in, hid.T @ problem.t / nv], 0)
    return ols_solve(R, C, threshold).T


def owo_(problem: MLPProblem, threshold: float = OLS_THRESHOLD) -> tuple[Tensor, Tensor]:
    """OWO in place on ``problem.Wo`` at the current W; returns (O, y) of the new network."""
    hid = problem.hidden()
    with torch.no_grad():
        problem.Wo.copy_(owo_weights(problem, hid, threshold))
    return hid, problem.outputs(hid)


def mse(t: Tensor, y: Tensor) -> Tensor:
    """The thesis's MSE (eq. 2.3): summed over outputs, averaged over patterns."""
    return (t - y).square().sum() / t.shape[0]


def negative_gradient(problem: MLPProblem, fprime: Tensor, EW: Tensor) -> Tensor:
    """G = -dE/dW = (2/N_v) sum_p delta_p x_p^T (eqs. 2.8-2.10), with EW = (t - y) W_oh and
    fprime = f'(n) = O (1 - O)."""
    return ((EW * fprime).T @ problem.x).mul_(2.0 / fprime.shape[0])


def hwo_direction(problem: MLPProblem, G: Tensor, threshold: float = OLS_THRESHOLD) -> Tensor:
    """The HWO direction D = G R_in^-1 (code ``e``; papers/amolf.md §2.1), solved with OLS; R_in
    is constant, so its OLS factor is computed once per problem."""
    key = ("hwo_factor", threshold)
    if key not in problem._cache:
        problem._cache[key] = ols_factor(problem.r_in, threshold)
    return ols_apply(problem._cache[key], G.T).T


@functools.lru_cache(maxsize=16)
def _gram_index(nh: int, n1: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Upper-triangle pair indices of N_h and N+1, and where each (k, n, j, m) reads from them."""
    kh, jh = torch.triu_indices(nh, nh, device=device)
    kx, jx = torch.triu_indices(n1, n1, device=device)
    pair_h = torch.empty(nh, nh, dtype=torch.long, device=device)
    pair_h[kh, jh] = pair_h[jh, kh] = torch.arange(kh.numel(), device=device)
    pair_x = torch.empty(n1, n1, dtype=torch.long, device=device)
    pair_x[kx, jx] = pair_x[jx, kx] = torch.arange(kx.numel(), device=device)
    where = (pair_h.view(nh, 1, nh, 1) * kx.numel() + pair_x.view(1, n1, 1, n1)).reshape(-1)
    return kh, jh, kx, jx, where


def kron_gram(fp: Tensor, x: Tensor, Q: Tensor) -> Tensor:
    """The input-weight Gauss-Newton Gram matrix (N_h (N+1) square, row-major (k, n)):
    K[(k,n), (j,m)] = Q[k,j] sum_p fp_pk fp_pj x_pn x_pm, i.e. (B^T B) * (Q kron 1) with
    B_p(k,n) = fp_pk x_pn. Both factors are symmetric, so only the pairs k <= j and n <= m are
    formed: one GEMM of N_v x N_h(N_h+1)/2 by N_v x (N+1)(N+2)/2, about a quarter of B^T B."""
    nh, n1 = fp.shape[1], x.shape[1]
    kh, jh, kx, jx, where = _gram_index(nh, n1, fp.device)
    fpT, xT = fp.T.contiguous(), x.T.contiguous()  # gathering rows is much faster than columns
    S = (fpT.index_select(0, kh) * fpT.index_select(0, jh)) @ (xT.index_select(0, kx) * xT.index_select(0, jx)).T
    K = S.view(-1).index_select(0, where).view(nh, n1, nh, n1).mul_(Q.view(nh, 1, nh, 1))
    return K.view(nh * n1, nh * n1)


def net_control_(x: Tensor, W: Tensor, bias_col: int, mean: float = 0.5, std: float = 1.0) -> None:
    """Scale each row of W in place so that the hidden net function n_p(k) has mean ``mean`` and
    population standard deviation ``std`` over the patterns of ``x`` (thesis §1.4; code)."""
    n = x @ W.T
    m, s = n.mean(0), n.std(0, correction=0)
    with torch.no_grad():
        W.mul_((std / s).unsqueeze(1))
        W[:, bias_col].add_(mean - m * std / s)
