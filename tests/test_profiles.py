"""Performance profiles on a hand-made example (AlgoPerf's definition, scripts.profiles)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scripts.profiles import default_taus, plot_profiles, profile, ratios

INF = math.inf
# four tasks, three optimizers; c does not apply to t4 (missing), nobody solves t3
COST = {
    "t1": {"a": 10.0, "b": 20.0, "c": INF},
    "t2": {"a": 30.0, "b": 15.0, "c": 60.0},
    "t3": {"a": INF, "b": INF, "c": INF},
    "t4": {"a": 5.0, "b": 5.0},
}


def test_ratios_are_cost_over_the_best_of_the_task():
    r = ratios(COST, ["a", "b", "c"])
    assert r["t1"] == {"a": 1.0, "b": 2.0, "c": INF}
    assert r["t2"] == {"a": 2.0, "b": 1.0, "c": 4.0}
    assert r["t3"] == {"a": INF, "b": INF, "c": INF}, "a task nobody solves is infinitely far for everyone"
    assert r["t4"] == {"a": 1.0, "b": 1.0, "c": INF}, "a missing (not applicable) pair never reaches the target"


@pytest.mark.parametrize(("tau", "expected"), [
    (1.0, {"a": 0.5, "b": 0.5, "c": 0.0}),     # fastest on t1, t4 / t2, t4 (a tie counts for both)
    (1.5, {"a": 0.5, "b": 0.5, "c": 0.0}),
    (2.0, {"a": 0.75, "b": 0.75, "c": 0.0}),   # within 2x: t1, t2, t4
    (4.0, {"a": 0.75, "b": 0.75, "c": 0.25}),  # c reaches t2 at 4x the best
    (INF, {"a": 0.75, "b": 0.75, "c": 0.25}),  # solved at all; never-reached stays out even at tau = inf
])
def test_profile_values(tau, expected):
    rho = profile(COST, ["a", "b", "c"], [tau])
    for s, value in expected.items():
        assert rho[s][0] == pytest.approx(value), f"rho_{s}({tau}): expected {value}, got {rho[s][0]}"


def test_profile_is_a_non_decreasing_step_function_from_one():
    taus = default_taus(COST, ["a", "b", "c"])
    assert taus[0] == 1.0 and taus[-1] >= 10.0 and np.all(np.diff(taus) > 0)
    for values in profile(COST, ["a", "b", "c"], taus).values():
        assert np.all(np.diff(values) >= 0) and values[-1] <= 1.0


def test_target_met_at_no_cost():
    r = ratios({"t": {"a": 0.0, "b": 0.0, "c": 3.0}}, ["a", "b", "c"])
    assert r["t"] == {"a": 1.0, "b": 1.0, "c": INF}


def test_plot_is_written(tmp_path):
    path = plot_profiles({"multiplies": COST, "seconds": COST}, ["a", "b", "c"], tmp_path / "p.png", "demo")
    assert path.exists() and path.stat().st_size > 1000
