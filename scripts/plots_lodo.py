"""LODO tables' own figures, through ``report.plot: "scripts.plots_lodo:<function>"``:

- ``hessian_error`` (table 3): LODO's Hessian-approximation error ||I - G H||_F / sqrt(n) (papers/lodo.md
  §1.6) against steps, mean over the seeds, for every optimizer whose evaluations report it;
- ``digits`` (tables 5 and 6): digits sampled pixel by pixel from LODO's final parameters (the first
  finished seed that saved ``params.pt``), ``report.sample_digits[<scale>]`` = {count, pixels}.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runners.plan import RunPlan  # noqa: E402
from runners.records import Record  # noqa: E402
from scripts.tables import optimizer_label  # noqa: E402


def _finished(cfg: DictConfig, plan: RunPlan) -> Record | None:
    record = Record(cfg.results_dir, plan.hash)
    return record if (record.summary() or {}).get("status") == "ok" else None


def hessian_error(table: int, cfg: DictConfig, plans: list[RunPlan], combos: list[list[str]], out: Path) -> list[Path]:
    curves: dict[str, list[pd.DataFrame]] = {}
    for plan, combo in zip(plans, combos, strict=True):
        record = _finished(cfg, plan)
        if record is None:
            continue
        evals = record.evals()
        if "hessian_error" in evals and evals["hessian_error"].notna().any():
            curves.setdefault(optimizer_label(plan, combo), []).append(evals[["step", "hessian_error"]].dropna())
    if not curves:
        return []
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for name, frames in curves.items():
        mean = pd.concat(frames).groupby("step")["hessian_error"].mean()
        ax.plot(mean.index, mean.values, label=f"{name} ({len(frames)} seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("||I - G H||_F / sqrt(n)  (100 random unit probes)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Table {table}: Hessian-approximation error (scale={cfg.scale.name})")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"table_{table}_hessian_error.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def digits(table: int, cfg: DictConfig, plans: list[RunPlan], combos: list[list[str]], out: Path) -> list[Path]:
    from scripts.sample_digits import sample_record

    setting = dict((cfg.report.get("sample_digits") or {}).get(cfg.scale.name) or {"count": 16, "pixels": 784})
    for plan, combo in zip(plans, combos, strict=True):
        record = _finished(cfg, plan)
        if optimizer_label(plan, combo) == "lodo" and record and (record.dir / "params.pt").exists():
            path = out / f"table_{table}_digits.png"
            return [sample_record(record.dir, path, int(setting["count"]), int(setting["pixels"]),
                                  data_dir=cfg.data_dir)]
    return []
