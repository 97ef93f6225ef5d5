"""Table 14, the suite's own: every optimizer on every task it applies to, at a fixed multiply budget
and (in separate runs) a fixed training-time budget per task.

Per run, the loss of each evaluation is paired with what was spent BEFORE it (multiplies or training
seconds at the end of the previous step; 0 for the first step), and smoothed by the trailing window
mean over (0.9 x, x], the LODO rule the other tables apply at their milestones. Then:

- error at the budget B: the smoothed loss at the last evaluation with x <= B;
- target of a task (AlgoPerf-style): the median over seeds of the baseline's (``report.baseline``,
  Adam) error at the budget, one per budget kind;
- x to target: the first x <= B whose smoothed loss is at most the target (inf: never);
- EPM, error change per multiply (AMOLF thesis): (first loss - error at M) / M.

Cells give mean ± std [95% bootstrap interval] (n seeds) of the error, the median over seeds of x to
target with the number of seeds that reached it, and the mean EPM. Performance profiles
(``scripts.profiles``) over the tasks use each cell's median x to target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from runners.plan import RunPlan
from runners.records import Record, atomic_write_csv, atomic_write_text
from scripts.plots import mean_curve
from scripts.profiles import plot_profiles, profile
from scripts.reproduce import choices
from scripts.tables import _fmt, bootstrap_ci, footer

KINDS = {"multiplies": "multiplies", "seconds": "seconds"}  # budget kind -> curve column
TAUS = (1.0, 2.0, 4.0, 10.0)


def spent_before(curve: pd.DataFrame, column: str) -> np.ndarray:
    """For each evaluation, ``column`` (cumulative multiplies or training seconds) at the end of the
    previous step: what had been spent when that loss was measured."""
    ends = curve.groupby("step", sort=True)[column].last()
    before = pd.Series(ends.to_numpy()[:-1], index=ends.index[1:]) if len(ends) else ends
    return curve["step"].map(before).fillna(0.0).to_numpy(dtype=float)


def smoothed(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Trailing window mean of ``loss`` over the evaluations with 0.9 x_i < x <= x_i (always
    including evaluation i itself); ``x`` is non-decreasing."""
    if len(loss) == 0:
        return np.asarray(loss, dtype=float)
    total = np.concatenate([[0.0], np.cumsum(loss)])
    index = np.arange(len(x))
    left = np.minimum(np.searchsorted(x, 0.9 * x, side="right"), index)
    return (total[index + 1] - total[left]) / (index + 1 - left)


def at_budget(x: np.ndarray, s: np.ndarray, budget: float) -> float:
    """The smoothed loss at the last evaluation with x <= budget (NaN when there is none)."""
    inside = np.flatnonzero(x <= budget)
    return float(s[inside[-1]]) if len(inside) else math.nan


def to_target(x: np.ndarray, s: np.ndarray, target: float, budget: float) -> float:
    """The first x <= budget whose smoothed loss is at most ``target``; inf when none is."""
    if not math.isfinite(target):
        return math.inf
    hit = np.flatnonzero((x <= budget) & (s <= target))
    return float(x[hit[0]]) if len(hit) else math.inf


def run_table(cfg: DictConfig, plans: list[RunPlan], combos: list[list[str]]) -> pd.DataFrame:
    """One row per run: task (its config name), optimizer, kind, seed, status, budget, error at the
    budget, first loss, and the run's (x, smoothed loss) for the to-target pass."""
    axis = cfg.report.budget_axis
    rows = []
    for plan, combo in zip(plans, combos, strict=True):
        choice = choices(combo)
        kind = choice[axis]
        budget = float(plan.budget[kind])
        record = Record(cfg.results_dir, plan.hash)
        summary = record.summary() or {"status": "missing"}
        row: dict[str, Any] = {"task": choice.get("task", plan.task["name"]),
                               "optimizer": choice.get("optimizer", plan.optimizer["name"]), "kind": kind,
                               "seed": plan.config["seed"], "status": summary["status"], "budget": budget,
                               "error": math.nan, "first_loss": math.nan, "x": None, "s": None,
                               "steps_per_second": summary.get("steps_per_second"),
                               "spent": summary.get("multiplies" if kind == "multiplies" else "train_seconds")}
        if summary["status"] in ("ok", "diverged"):
            curve = record.curve()
            finite = np.isfinite(curve["loss"].to_numpy(dtype=float))  # a diverged run: the part before NaN
            if finite.any():
                x = spent_before(curve, KINDS[kind])[finite]
                s = smoothed(x, curve["loss"].to_numpy(dtype=float)[finite])
                row.update(x=x, s=s, first_loss=float(curve["loss"].iloc[0]))
                if summary["status"] == "ok":
                    row["error"] = at_budget(x, s, budget)
        rows.append(row)
    runs = pd.DataFrame(rows)
    baseline = cfg.report.get("baseline", "adam")
    targets = (runs[(runs["optimizer"] == baseline) & (runs["status"] == "ok")]
               .groupby(["task", "kind"])["error"].median())
    runs["target"] = [targets.get((t, k), math.nan) for t, k in zip(runs["task"], runs["kind"], strict=True)]
    runs["to_target"] = [to_target(r.x, r.s, r.target, r.budget) if r.x is not None else math.inf
                         for r in runs.itertuples()]
    runs["epm"] = [(r.first_loss - r.error) / r.budget if r.kind == "multiplies" and r.budget else math.nan
                   for r in runs.itertuples()]
    return runs


def median_cost(values: pd.Series) -> float:
    """Median over seeds of x to target, inf counting as the largest value (inf when half or more never
    reached it)."""
    finite = np.sort(values.to_numpy(dtype=float))
    return float(finite[(len(finite) - 1) // 2]) if len(finite) else math.inf  # the lower median


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, optimizer), the two budget kinds side by side."""
    out = []
    for (task, optimizer), group in runs.groupby(["task", "optimizer"], sort=False):
        cell: dict[str, Any] = {"task": task, "optimizer": optimizer, "runs": len(group),
                                "ok": int((group["status"] == "ok").sum()),
                                "diverged": int((group["status"] == "diverged").sum()),
                                "failed": int((group["status"] == "failed").sum()),
                                "missing": int((group["status"] == "missing").sum())}
        for kind in KINDS:
            part = group[group["kind"] == kind]
            finished = part[part["status"].isin(["ok", "diverged"])]
            errors = part.loc[part["status"] == "ok", "error"].dropna().to_numpy(dtype=float)
            low, high = bootstrap_ci(errors)
            cell.update({
                f"budget_{kind}": float(part["budget"].iloc[0]) if len(part) else math.nan,
                f"target_{kind}": float(part["target"].iloc[0]) if len(part) else math.nan,
                f"error@{kind}": float(errors.mean()) if len(errors) else math.nan,
                f"error@{kind} std": float(errors.std()) if len(errors) else math.nan,
                f"error@{kind} ci_low": low, f"error@{kind} ci_high": high, f"error@{kind} n": len(errors),
                f"{kind}_to_target": median_cost(finished["to_target"]) if len(finished) else math.inf,
                f"reached_{kind}": int(np.isfinite(finished["to_target"].to_numpy(dtype=float)).sum()),
                f"finished_{kind}": len(finished),
                f"diverged_{kind}": int((part["status"] == "diverged").sum()),
            })
        mult = group[(group["kind"] == "multiplies") & (group["status"] == "ok")]
        cell["epm"] = float(mult["epm"].mean()) if len(mult) else math.nan
        rates = group["steps_per_second"].dropna()
        cell["steps_per_second"] = float(rates.mean()) if len(rates) else math.nan
        out.append(cell)
    return pd.DataFrame(out)


def costs(frame: pd.DataFrame, kind: str, tasks: list[str], optimizers: list[str]) -> dict[str, dict[str, float]]:
    """task -> optimizer -> median x to target (inf where it never reached it or does not apply)."""
    table = {t: {o: math.inf for o in optimizers} for t in tasks}
    for row in frame.itertuples():
        if row.task in table:
            table[row.task][row.optimizer] = getattr(row, f"{kind}_to_target")
    return table


def _error_cell(row: dict, kind: str) -> str:
    n, diverged = row[f"error@{kind} n"], row[f"diverged_{kind}"]
    if n == 0:
        return f"diverged ({diverged}/{row[f'finished_{kind}']})" if diverged else "–"
    ci = f" [{_fmt(row[f'error@{kind} ci_low'])}, {_fmt(row[f'error@{kind} ci_high'])}]" if n > 1 else ""
    note = f", {diverged} diverged" if diverged else ""
    return f"{_fmt(row[f'error@{kind}'])} ± {_fmt(row[f'error@{kind} std'])}{ci} (n={n}{note})"


def _cost_cell(row: dict, kind: str) -> str:
    value, reached, finished = row[f"{kind}_to_target"], row[f"reached_{kind}"], row[f"finished_{kind}"]
    return f"{_fmt(value) if math.isfinite(value) else 'never'} ({reached}/{finished})"


def to_markdown(table: int, cfg: DictConfig, frame: pd.DataFrame, runs: pd.DataFrame, tasks: list[str],
                optimizers: list[str], excluded: list[tuple[list[str], str]], unavailable: dict[str, str],
                figures: list[Path], plans: list[RunPlan]) -> str:
    baseline = cfg.report.get("baseline", "adam")
    lines = [f"# Table {table}: {cfg.report.title}", "",
             f"Budgets per task and the targets: the median over seeds of {baseline}'s error at the budget "
             "(AlgoPerf's rule, with the config-default baseline).", "",
             "| task | multiply budget M | time budget T (s) | step cap (M runs) | target at M | target at T "
             "| optimizers run | left out |", "|---|---|---|---|---|---|---|---|"]
    left_out: dict[str, list[str]] = {}
    for combo, _ in excluded:
        choice = choices(combo)
        left_out.setdefault(choice["task"], [])
        if choice["optimizer"] not in left_out[choice["task"]]:
            left_out[choice["task"]].append(choice["optimizer"])
    for task in tasks:
        rows = frame[frame["task"] == task]
        if not len(rows):
            continue
        first = rows.iloc[0]
        cap = runs.loc[(runs["task"] == task) & (runs["kind"] == "multiplies")]
        lines.append(f"| {task} | {_fmt(first['budget_multiplies'])} | {_fmt(first['budget_seconds'])} | "
                     f"{_fmt(cap['step_cap'].iloc[0]) if len(cap) else '–'} | {_fmt(first['target_multiplies'])} | "
                     f"{_fmt(first['target_seconds'])} | {len(rows)} | {len(left_out.get(task, []))} |")
    lines += ["", "| task | optimizer | runs | error at M | multiplies to target | EPM | error at T | "
              "seconds to target | steps/s |", "|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        rows = frame[frame["task"] == task]
        best = {kind: rows[f"error@{kind}"].min() for kind in KINDS}
        fastest = {kind: rows[f"{kind}_to_target"].min() for kind in KINDS}
        for row in rows.to_dict("records"):
            cells = [task, row["optimizer"], f"{row['ok']}/{row['runs']}"]
            for kind in KINDS:
                error, cost = _error_cell(row, kind), _cost_cell(row, kind)
                if row[f"error@{kind}"] == best[kind]:
                    error = f"**{error}**"
                if math.isfinite(row[f"{kind}_to_target"]) and row[f"{kind}_to_target"] == fastest[kind]:
                    cost = f"**{cost}**"
                cells += [error, cost] + ([_fmt(row["epm"])] if kind == "multiplies" else [])
            cells.append(_fmt(row["steps_per_second"]))
            lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Performance profiles", "",
              "rho(tau): the fraction of the tasks on which the optimizer reached the target within tau times "
              "the best optimizer's cost (multiplies or training seconds); 'never' and 'not applicable' count "
              "as infinitely far, so rho(large tau) is the share of all tasks it solved.", "",
              "| optimizer | " + " | ".join(f"mult. rho({t:g})" for t in TAUS) + " | mult. solved | "
              + " | ".join(f"sec. rho({t:g})" for t in TAUS) + " | sec. solved |",
              "|---|" + "---|" * (2 * len(TAUS) + 2)]
    panels = {kind: costs(frame, kind, [t for t in tasks if t not in unavailable], optimizers) for kind in KINDS}
    rho = {kind: profile(panels[kind], optimizers, [*TAUS, math.inf]) for kind in KINDS}
    for optimizer in optimizers:
        cells = [optimizer]
        for kind in KINDS:
            cells += [f"{v:.2f}" for v in rho[kind][optimizer]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]

    if excluded:
        lines += ["## Left out: the optimizer does not apply to the task", "",
                  "From `runners.plan.unmet_requirements` (an optimizer's `requires` against the task's `offers`), "
                  "the check `make_plan` applies to every run.", ""]
        needs: dict[str, dict[str, list[str]]] = {}  # task -> what is missing -> optimizers
        offers: dict[str, str] = {}
        for combo, reason in excluded:
            choice = choices(combo)
            need = reason.split(" needs ", 1)[-1].split(", which task", 1)[0]
            names = needs.setdefault(choice["task"], {}).setdefault(need, [])
            if choice["optimizer"] not in names:
                names.append(choice["optimizer"])
            offers[choice["task"]] = reason.rsplit("(it offers: ", 1)[-1].rstrip(")")
        for task, by_need in needs.items():
            parts = "; ".join(f"{', '.join(names)} (need {need})" for need, names in by_need.items())
            lines.append(f"- {task} (offers: {offers[task]}): {parts}")
        lines.append("")

    lines += ["Notes:"] + [f"- NOT RUN, data missing for {name}: {message}" for name, message in unavailable.items()]
    lines += [f"- {note}" for note in cfg.report.get("notes") or []]
    lines += ["- Cells: error = training loss, mean ± population std [95% bootstrap interval of the mean] "
              "(n = seeds that finished without diverging); 'x to target': median over seeds, with "
              "(seeds that reached it / seeds that finished); bold: the best of the task.",
              ""]
    budgets = {f"{t} ({k})": b for (t, k), b in runs.groupby(["task", "kind"])["budget"].first().items()}
    lines.append(footer(cfg, plans, budgets, (f"Tuning budget: {cfg.report.tuning}",)))
    return "\n".join(lines) + "\n"


def plot_curves(table: int, cfg: DictConfig, plans: list[RunPlan], runs: pd.DataFrame, out: Path) -> list[Path]:
    """Per task: mean training loss over seeds against multiplies (the multiply-budget runs) and
    against training seconds (the time-budget runs), one curve per optimizer, the targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [Record(cfg.results_dir, plan.hash) for plan in plans]
    runs = runs.assign(record=records)
    paths = []
    for index, (task, part) in enumerate(runs.groupby("task", sort=False)):
        fig, axes = plt.subplots(1, 2, figsize=(14, 5), constrained_layout=True)
        colours = plt.get_cmap("tab20").colors
        for ax, kind in zip(axes, KINDS, strict=True):
            rows = part[part["kind"] == kind]
            for i, (optimizer, group) in enumerate(rows.groupby("optimizer", sort=False)):
                curve = mean_curve(list(group["record"]))
                if curve is None:
                    continue
                curve = curve[curve[KINDS[kind]] > 0]  # warm-up steps are off the clock (0 s): not on a log axis
                ax.plot(curve[KINDS[kind]], curve["loss"], label=optimizer, linewidth=1.1,
                        color=colours[i % len(colours)], linestyle="-" if i < len(colours) else "--")
            target = rows["target"].iloc[0] if len(rows) else math.nan
            if math.isfinite(target):
                ax.axhline(target, color="black", linestyle=":", linewidth=1, label="target")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("multiplies" if kind == "multiplies" else "training seconds")
            ax.set_title(f"{kind} budget {_fmt(rows['budget'].iloc[0]) if len(rows) else '–'}")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("training loss")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"Table {table}: {task} (scale={cfg.scale.name})")
        path = out / f"table_{table}_{index}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write(table: int, cfg: DictConfig, plans: list[RunPlan], combos: list[list[str]], unavailable: dict[str, str],
          excluded: list[tuple[list[str], str]]) -> list[Path]:
    """``scripts.tables.write_table`` for table 14 (``report.writer``)."""
    out = Path(cfg.results_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    runs = run_table(cfg, plans, combos)
    runs["step_cap"] = [p.budget["steps"] for p in plans]
    frame = aggregate(runs)
    tasks = list(dict.fromkeys(runs["task"]))
    optimizers = [str(o) for o in cfg.report.sweep.optimizer]
    registered = dict(zip(runs["task"], (plan.task["name"] for plan in plans), strict=True))  # config -> task
    no_data = {t: unavailable[registered[t]] for t in tasks if registered[t] in unavailable}
    frame["data_error"] = frame["task"].map(no_data).fillna("")
    solvable = [t for t in tasks if t not in no_data]
    panels = {f"{kind} to target": costs(frame, kind, solvable, optimizers) for kind in KINDS}
    figures = [plot_profiles(panels, optimizers, out / "figures" / f"table_{table}_profiles.png",
                             f"Table {table}: performance profiles over {len(solvable)} tasks "
                             f"(scale={cfg.scale.name})")]
    figures += plot_curves(table, cfg, plans, runs, out / "figures")
    md, csv = out / f"table_{table}.md", out / f"table_{table}.csv"
    atomic_write_text(md, to_markdown(table, cfg, frame, runs, tasks, optimizers, excluded, no_data, figures, plans))
    atomic_write_csv(csv, frame.assign(scale=cfg.scale.name, table=table))
    return [md, csv, *figures]
