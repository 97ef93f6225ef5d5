"""The genetic tuner of LODO Appendix E (papers/lodo.md §6.2): coordinates, selection, and a tiny
end-to-end tune through the Hydra joblib launcher that writes a config a table can use."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import CONFIGS, run_cli
from hydra import compose, initialize_config_dir
from hypothesis import given
from hypothesis import strategies as st

from runners.plan import make_plan
from runners.records import Record
from runners.run import final_window_loss
from scripts import tune


def test_coordinates_match_appendix_e():
    assert tune.normalise("beta1", 0.9) == pytest.approx(math.log(0.1)), "beta: z = ln(1 - h)"
    assert tune.normalise("momentum", 0.0) == 0.0
    assert tune.normalise("weight_decay", 5e-4) == pytest.approx(math.log(5e-4)), "others: z = ln h"
    assert tune.normalise("rho", 0.9) == pytest.approx(math.log(0.9)), "RMSprop's rho is tuned on a log scale"
    assert tune.denormalise("rho", 0.5) > 1.0, "so rho can exceed 1, as in the LODO code"
    assert tune.denormalise("beta2", 0.7) == 0.0, "h = max(0, 1 - e^z) clamps at 0"
    assert tune.denormalise("lr", math.log(0.3)) == pytest.approx(0.3)


@given(st.floats(1e-9, 1 - 1e-9), st.sampled_from(["beta", "beta1", "momentum", "lodo_beta"]))
def test_momentum_coordinates_round_trip(h, name):
    assert tune.denormalise(name, tune.normalise(name, h)) == pytest.approx(h, rel=1e-9, abs=1e-12)


@given(st.floats(1e-12, 1e6), st.sampled_from(["lr", "alpha0", "meta_lr", "tau", "eps", "rho"]))
def test_log_coordinates_round_trip(h, name):
    assert tune.denormalise(name, tune.normalise(name, h)) == pytest.approx(h, rel=1e-12)


def test_tuned_names_exist_in_every_listed_optimizer():
    listed = yaml.safe_load((tune.CONFIGS / "tuner" / "optimizers.yaml").read_text())["tuned"]
    for name, tuned in listed.items():
        path = tune.CONFIGS / "optimizer" / f"{name}.yaml"
        if path.exists():  # optimizers of other issues may not exist yet
            hparams = yaml.safe_load(path.read_text())["hparams"]
            assert set(tuned) <= set(hparams), f"{name}: tuned {tuned} not all in its hyperparameters {sorted(hparams)}"


def test_selection_keeps_the_best_half_and_ignores_nan():
    scores = [3.0, math.nan, 1.0, math.inf, 2.0, 0.5]
    assert tune.select(scores, 6) == [5, 2, 4], "best 3 of 6, NaN and inf never chosen"
    assert tune.select([math.nan, 4.0, math.inf, 1.0], 4) == [3, 1]
    assert tune.select([math.nan, 7.0, math.inf, math.nan, math.inf, math.nan], 6) == [1], \
        "only finite children are kept when fewer than half are finite"
    assert tune.select([math.nan] * 4, 4) == []


def test_every_task_schedule_is_complete():
    for task in ("rosenbrock", "noisy_quadratic", "mnist_generation", "cifar10_resnet18"):
        paper = tune.Schedule.load(task, "paper")
        assert len(paper.sigma) == 10 and paper.sigma[0] == 3, f"{task}: Table 5 has 10 generations from sigma 3"
        for scale in ("quick", "smoke"):
            tune.Schedule.load(task, scale)
    assert tune.Schedule.load("rosenbrock", "paper").steps == [200] * 10
    assert tune.Schedule.load("noisy_quadratic", "paper").steps == [100, 300, 1000] + [10000] * 7


def test_tiny_tune_end_to_end_through_the_launcher(results, tmp_path, capsys):
    out = tmp_path / "tuned"
    code = tune.main(["4", "adam", "scale=smoke", f"results_dir={results}", "--out", str(out), "--jobs", "2"])
    assert code == 0, capsys.readouterr().err
    history = json.loads((results / "cache" / "tune" / "table_4_adam_smoke_seed0" / "history.json").read_text())
    assert [len(g["children"]) for g in history] == [4, 4], "2 generations x 4 children"
    hashes = [c["hash"] for g in history for c in g["children"]]
    assert len(set(hashes)) == 8, "every child is its own run"
    for generation in history:
        for child in generation["children"]:
            record = Record(results, child["hash"])
            assert record.finished(), f"child {child['hash']} has no finished record"
            assert len(record.curve()) == 50, "each child trains for T = 50 loss evaluations"
        scores = [c["score"] for c in generation["children"]]
        kept = sorted(scores)[:2]
        assert sorted(scores[i] for i in generation["selected"]) == kept, "the best half is selected"
    seeds = {json.loads((results / "runs" / h / "config.json").read_text())["seed"] for h in hashes}
    assert len(seeds) == 8, f"each child has its own seed, got {seeds}"

    tuned = yaml.safe_load((out / "table_4_smoke.yaml").read_text())["hparams"]["adam"]
    assert set(tuned) == {"lr", "beta1", "beta2"}, tuned
    last = history[-1]
    for k, name in enumerate(last["names"]):
        z = sum(last["children"][i]["z"][k] for i in last["selected"]) / len(last["selected"])
        assert tuned[name] == pytest.approx(tune.denormalise(name, z), rel=1e-6), \
            f"{name}: expected the mean of the selected children's z, un-normalised"

    # a table picks the tuned values up with +tuned=<file>
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[f"results_dir={results}", "+experiment=table_4", "optimizer=adam",
                                           f"hydra.searchpath=[file://{tmp_path}]", "+tuned=table_4_smoke"])
    hparams = make_plan(cfg).optimizer["hparams"]
    assert all(hparams[k] == pytest.approx(v) for k, v in tuned.items()), f"expected {tuned}, got {hparams}"


def test_optuna_sweeper_minimises_the_final_window_loss(results, tmp_path):
    out = run_cli("-m", "runners.run", "-m", "hydra/sweeper=optuna_lr", "task=rosenbrock", "optimizer=adam",
                  "scale=smoke", "hydra.sweeper.n_trials=2", f"results_dir={results}", "progress=false",
                  f"hydra.sweep.dir={tmp_path / 'optuna'}", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optuna" / "optimization_results.yaml").read_text())["best_value"]
    scores = [final_window_loss(Record(results, p.name)) for p in (results / "runs").iterdir()]
    assert len(scores) == 2 and best == pytest.approx(min(scores)), \
        f"Optuna's best value {best} should be the smaller final-window loss of the two runs {scores}"
