"""Table 14's aggregation (scripts.suite_table) on hand-made run records: the charge of each loss, the
trailing-window error at the budget, Adam's median as the target, cost to target, EPM, profiles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from runners.plan import RunPlan
from runners.records import Record
from scripts.suite_table import aggregate, run_table, smoothed, spent_before, write

BUDGET = 100.0  # multiplies (and seconds x 100)


def test_each_loss_is_charged_with_what_was_spent_before_it():
    # two evaluations in step 2 (a method that evaluates twice per step), multiplies at the END of each step
    curve = pd.DataFrame({"step": [1, 2, 2, 3], "multiplies": [10, 30, 30, 60], "loss": [4.0, 3.0, 2.5, 1.0]})
    assert list(spent_before(curve, "multiplies")) == [0, 10, 10, 30]


def test_trailing_window_mean_over_the_last_tenth():
    x = np.array([0.0, 50.0, 91.0, 95.0, 100.0])
    s = smoothed(x, np.array([9.0, 5.0, 3.0, 2.0, 1.0]))
    assert s[0] == 9.0 and s[1] == 5.0  # alone in its window
    assert s[-1] == pytest.approx((3.0 + 2.0 + 1.0) / 3), "window (90, 100] holds x = 91, 95, 100"


def curve(losses: list[float]) -> pd.DataFrame:
    steps = np.arange(1, len(losses) + 1)
    return pd.DataFrame({"eval": steps, "step": steps, "seconds": steps / 10.0, "multiplies": steps * 10,
                         "loss": losses})


def make_runs(results) -> tuple[list[RunPlan], list[list[str]]]:
    """Adam, seed k: loss 10 - x/20 + (k - 1) at x = 0, 10, ..., 100 spent (errors 4, 5, 6 at the budget:
    target 5, reached at x = 80, 100, never). 'fast': 10 - x/10 (reaches 5 at x = 50); its seed 2
    diverges at x = 70, after reaching the target."""
    plans, combos = [], []
    x = np.arange(0, 110, 10.0)
    for optimizer in ("adam", "fast"):
        for kind in ("multiplies", "seconds"):
            for seed in range(3):
                losses = list(10 - x / 20 + seed - 1) if optimizer == "adam" else list(10 - x / 10)
                status = "ok"
                if optimizer == "fast" and seed == 2:
                    losses, status = losses[:7] + [math.nan], "diverged"
                budget = {"steps": 1000, "multiplies": BUDGET} if kind == "multiplies" else \
                    {"steps": 1, "seconds": BUDGET / 100}
                config = {"task": {"name": "toy"}, "optimizer": {"name": optimizer}, "budget": budget, "seed": seed}
                plan = RunPlan(config=config, hash=f"{optimizer}-{kind}-{seed}")
                c = curve(losses)
                Record(results, plan.hash).write(config, c, pd.DataFrame(), {
                    "status": status, "steps_per_second": 100.0, "multiplies": int(c["multiplies"].iloc[-1]),
                    "train_seconds": float(c["seconds"].iloc[-1]), "device": "cpu", "git_revision": "test"})
                plans.append(plan)
                combos.append(["task=toy", f"optimizer={optimizer}", f"suite_table.kind={kind}", f"seed={seed}"])
    return plans, combos


@pytest.fixture
def cfg(tmp_path):
    return OmegaConf.create({
        "results_dir": str(tmp_path / "results"), "scale": {"name": "smoke", "seeds": 3},
        "report": {"title": "demo", "budget_axis": "suite_table.kind", "baseline": "adam",
                   "sweep": {"optimizer": ["adam", "fast", "never_applies"]}, "tuning": "no tuning: demo",
                   "notes": ["a note"]}})


def test_targets_costs_and_epm(cfg):
    plans, combos = make_runs(cfg.results_dir)
    runs = run_table(cfg, plans, combos)
    adam = runs[(runs["optimizer"] == "adam") & (runs["kind"] == "multiplies")].sort_values("seed")
    assert list(adam["error"]) == pytest.approx([4.0, 5.0, 6.0])
    assert set(runs["target"]) == {5.0}, "target: the median over seeds of Adam's error at the budget"
    assert list(adam["to_target"]) == [80.0, 100.0, math.inf]

    cells = aggregate(runs).set_index("optimizer")
    assert cells.loc["adam", "multiplies_to_target"] == 100.0, "the median over seeds (never = largest)"
    assert cells.loc["fast", "multiplies_to_target"] == 50.0
    assert cells.loc["fast", "reached_multiplies"] == 3, "a run that diverged after reaching the target reached it"
    assert cells.loc["fast", "error@multiplies n"] == 2 and cells.loc["fast", "diverged_multiplies"] == 1
    assert cells.loc["fast", "error@multiplies"] == pytest.approx(0.0)
    assert cells.loc["adam", "epm"] == pytest.approx(0.05), "(first loss - error at M) / M"
    assert cells.loc["adam", "seconds_to_target"] == pytest.approx(1.0)  # same curves in seconds / 100
    assert cells.loc[["adam", "fast"], ["runs", "ok", "diverged"]].to_dict("list") == \
        {"runs": [6, 6], "ok": [6, 4], "diverged": [0, 2]}


def test_write_gives_markdown_csv_and_profiles(cfg):
    plans, combos = make_runs(cfg.results_dir)
    excluded = [(["task=toy", "optimizer=never_applies", "suite_table.kind=multiplies", "seed=0"],
                 "optimizer 'never_applies' needs mlp, which task 'toy' does not offer (it offers: gradients only)")]
    paths = write(14, cfg, plans, combos, {}, excluded)
    md = paths[0].read_text()
    assert "| toy | fast | 4/6 | **0 ± 0 [0, 0] (n=2, 1 diverged)** | **50 (3/3)** |" in md, md
    assert "| toy | adam | 6/6 | 5 ± 0.8165 [4, 6] (n=3) | 100 (2/3) |" in md, md
    assert "| fast | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in md  # fastest on the only task
    assert "| adam | 0.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in md  # 2x the best
    assert "| never_applies | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |" in md
    assert "- toy (offers: gradients only): never_applies (need mlp)" in md
    assert "Tuning budget: no tuning: demo" in md and "scale=smoke" in md
    assert "![table_14_profiles](figures/table_14_profiles.png)" in md
    assert all(p.exists() for p in paths)
    frame = pd.read_csv(paths[1])
    assert set(frame["optimizer"]) == {"adam", "fast"} and (frame["missing"] == 0).all()
