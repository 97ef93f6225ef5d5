"""PNG plots of a table: training loss against loss evaluations, training seconds and multiplies,
one curve per optimizer (mean over the seeds that did not diverge, smoothed by a running mean over
1% of the run), one figure per task variant."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runners.plan import RunPlan  # noqa: E402
from runners.records import Record  # noqa: E402

AXES = (("eval", "loss evaluations"), ("seconds", "training seconds"), ("multiplies", "multiplies"))


def mean_curve(records: list[Record]) -> pd.DataFrame | None:
    """Average the curves of several seeds on their common evaluation index."""
    curves = [r.curve() for r in records if (r.summary() or {}).get("status") == "ok"]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    stacked = pd.concat([c.iloc[:length].reset_index(drop=True) for c in curves])
    mean = stacked.groupby(level=0).mean()
    window = max(1, length // 100)
    mean["loss"] = mean["loss"].rolling(window, min_periods=1).mean()
    return mean


def plot_table(table: int, cfg: DictConfig, plans: list[RunPlan], labels: list[str], out: Path) -> list[Path]:
    """One figure per task label (the task and its swept options)."""
    groups: dict[str, dict[str, list[Record]]] = {}
    for plan, label in zip(plans, labels, strict=True):
        groups.setdefault(label, {}).setdefault(plan.optimizer["name"], []).append(
            Record(cfg.results_dir, plan.hash))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (label, by_optimizer) in enumerate(groups.items()):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
        for name, records in by_optimizer.items():
            curve = mean_curve(records)
            if curve is None:
                continue
            for ax, (column, _) in zip(axes, AXES, strict=True):
                ax.plot(curve[column].clip(lower=1e-12), curve["loss"], label=name, linewidth=1.2)
        for ax, (_, xlabel) in zip(axes, AXES, strict=True):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.grid(True, which="major", alpha=0.3)
        axes[0].set_ylabel("training loss")
        axes[-1].legend(fontsize=8)
        fig.suptitle(f"Table {table}: {label} (scale={cfg.scale.name})")
        path = out / (f"table_{table}.png" if len(groups) == 1 else f"table_{table}_{index}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
