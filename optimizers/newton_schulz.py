"""The quintic Newton-Schulz "zeroth power" shared by the orthogonalized optimizers (papers/orthogonal.md §0),
and the helpers that batch it over matrices of the same shape.

``zeropower(G)`` maps a stack of matrices ``[..., m, n]`` to approximately ``U V^T`` (with singular values
in roughly [0.68, 1.13] after 5 steps of Keller Jordan's coefficients): transpose to wide, divide by the
Frobenius norm (torch.optim.Muon's ``max(||G||_F, eps)``), then ``k`` times ``X <- a X + (b A + c A^2) X``
with ``A = X X^T``. The iteration is scale-invariant (NS(cG) = NS(G) for c > 0, up to eps). Coefficients
are a triple used at every step, or one triple per step; the precision is bfloat16 (what Keller, torch
and the papers' code run, CPU included) or float32 (for numerical checks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's Muon, torch.optim.Muon's default
Coefficients = tuple[float, float, float] | Sequence[tuple[float, float, float]]


def coefficient_schedule(coefficients: Coefficients, steps: int) -> list[tuple[float, float, float]]:
    """``steps`` triples: a single triple repeated, or a per-step sequence of exactly ``steps`` triples."""
    if steps < 1:
        raise ValueError(f"Invalid Newton-Schulz steps: {steps} (must be >= 1)")
    if len(coefficients) == 3 and all(isinstance(c, int | float) for c in coefficients):
        return [tuple(float(c) for c in coefficients)] * steps
    schedule = [tuple(float(c) for c in triple) for triple in coefficients]
    if len(schedule) != steps or any(len(t) != 3 for t in schedule):
        raise ValueError(f"Newton-Schulz coefficients must be one (a, b, c) triple or {steps} triples, "
                         f"got {coefficients!r}")
    return schedule


def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / max(||x||_F, eps)`` per matrix of a ``[..., m, n]`` stack."""
    return x / torch.linalg.matrix_norm(x).clamp_min(eps)[..., None, None]


def newton_schulz_steps(x: torch.Tensor, schedule: Sequence[tuple[float, float, float]]) -> torch.Tensor:
    """Apply the quintic iteration to an already normalised, wide ``[B, m, n]`` stack (m <= n)."""
    for a, b, c in schedule:
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x


def zeropower(g: torch.Tensor, coefficients: Coefficients = MUON_COEFFICIENTS, steps: int = 5, eps: float = 1e-7,
              dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Newton-Schulz orthogonalization of a matrix or a stack ``[..., m, n]``, returned in ``dtype``."""
    if g.ndim < 2:
        raise ValueError(f"zeropower needs a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    schedule = coefficient_schedule(coefficients, steps)
    batch_shape = g.shape[:-2]
    x = g.reshape(-1, *g.shape[-2:]).to(dtype)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT
    x = newton_schulz_steps(normalize(x, eps), schedule)
    if not wide:
        x = x.mT
    return x.reshape(*batch_shape, *g.shape[-2:])


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """A weight or its gradient as (fan_out, fan_in * kernel): conv filters flattened, matrices unchanged."""
    return t.reshape(t.shape[0], -1)


def by_shape(matrices: Sequence[torch.Tensor]) -> dict[tuple[int, ...], list[int]]:
    """Indices of ``matrices`` grouped by shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(matrices):
        groups.setdefault(tuple(m.shape), []).append(i)
    return groups


def map_batched(matrices: Sequence[torch.Tensor], fn: Callable[[torch.Tensor, list[int]], torch.Tensor]
                ) -> list[torch.Tensor]:
    """Apply ``fn(stack [B, m, n], indices)`` once per group of same-shaped matrices and return the
    results in the input order (each a ``[m, n]`` slice of its group's output)."""
    out: list[torch.Tensor | None] = [None] * len(matrices)
    for index in by_shape(matrices).values():
        stacked = torch.stack([matrices[i] for i in index]) if len(index) > 1 else matrices[index[0]][None]
        for i, result in zip(index, fn(stacked, index).unbind(0), strict=True):
            out[i] = result
    return out  # type: ignore[return-value]
