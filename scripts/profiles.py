"""Performance profiles (Dolan & Moré 2002, as AlgoPerf scores submissions: Dahl et al. 2023, §4.5).

For each task p and optimizer s, ``cost[p][s]`` is what s spent to reach p's target (multiplies or
seconds; ``inf`` when it never did, or does not apply to p). The performance ratio is
r(p, s) = cost[p][s] / min_s' cost[p][s'], ``inf`` when s never reached the target (or when no
optimizer did), and the profile of s is

    rho_s(tau) = |{p : r(p, s) <= tau}| / |P|,

the fraction of ALL tasks on which s was within a factor tau of the best. So rho_s(1) is the share of
tasks s was fastest on, and rho_s(tau) for large tau the share it solved at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def ratios(cost: Mapping[str, Mapping[str, float]], optimizers: Sequence[str]) -> dict[str, dict[str, float]]:
    """r(p, s) for every task p of ``cost`` and every optimizer s of ``optimizers`` (a pair missing from
    ``cost[p]`` counts as never reaching the target)."""
    out: dict[str, dict[str, float]] = {}
    for task, by_optimizer in cost.items():
        finite = [c for c in by_optimizer.values() if c is not None and math.isfinite(c)]
        best = min(finite) if finite else math.inf
        out[task] = {}
        for s in optimizers:
            c = by_optimizer.get(s, math.inf)
            c = math.inf if c is None or math.isnan(c) else c
            if not math.isfinite(c) or not math.isfinite(best):
                out[task][s] = math.inf
            elif best <= 0:  # reached at no cost (the target was met at the start): ties at ratio 1
                out[task][s] = 1.0 if c <= 0 else math.inf
            else:
                out[task][s] = c / best
    return out


def profile(cost: Mapping[str, Mapping[str, float]], optimizers: Sequence[str],
            taus: Sequence[float]) -> dict[str, np.ndarray]:
    """rho_s(tau) for each optimizer s at each tau (an array aligned with ``taus``)."""
    r = ratios(cost, optimizers)
    n_tasks = len(r)
    taus = np.asarray(taus, dtype=float)
    out = {}
    for s in optimizers:
        values = np.array([r[task][s] for task in r], dtype=float)
        within = (values[None, :] <= taus[:, None]) & np.isfinite(values)[None, :]  # never: at no tau
        out[s] = within.sum(axis=1) / n_tasks if n_tasks else np.zeros(len(taus))
    return out


def default_taus(cost: Mapping[str, Mapping[str, float]], optimizers: Sequence[str], points: int = 400) -> np.ndarray:
    """Log-spaced tau from 1 to a little past the largest finite ratio (at least 10)."""
    finite = [v for row in ratios(cost, optimizers).values() for v in row.values() if math.isfinite(v)]
    top = max(10.0, 1.5 * max(finite, default=1.0))
    return np.unique(np.concatenate([[1.0], np.geomspace(1.0, top, points)]))


def plot_profiles(panels: Mapping[str, Mapping[str, Mapping[str, float]]], optimizers: Sequence[str], path: Path,
                  title: str) -> Path:
    """One panel per cost kind (e.g. ``{"multiplies to target": cost, "seconds to target": cost}``),
    one step curve per optimizer; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2.5, 5.2), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    styles = ("-", "--", ":", "-.")
    for ax, (label, cost) in zip(axes[0], panels.items(), strict=True):
        taus = default_taus(cost, optimizers)
        rho = profile(cost, optimizers, taus)
        for i, s in enumerate(optimizers):
            ax.step(taus, rho[s], where="post", label=s, color=colours[i % len(colours)],
                    linestyle=styles[(i // len(colours)) % len(styles)], linewidth=1.3)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("tau (ratio to the best optimizer on the task)")
        ax.set_ylabel("fraction of tasks within tau of the best")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), ncol=1 + len(optimizers) // 24)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
