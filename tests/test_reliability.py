"""Fault and bad-input suite: sweeps survive SIGKILL, concurrency, divergence and broken inputs
without losing results. The figures (kills survived, runs lost, bad inputs tried) are written to
``results/reliability.md`` at the end of the session (``conftest.pytest_sessionfinish``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import RELIABILITY_PARTS, ROOT, run_cli

FIGURES: dict[str, list] = {"kills": [], "bad_inputs": [], "resumed": []}
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module", autouse=True)
def reliability_figures():
    """This process's share of the figures; ``conftest.pytest_sessionfinish`` merges every worker's share
    into ``results/reliability.md`` (pytest-xdist may spread the module over several workers)."""
    yield
    if any(FIGURES.values()):
        parts = Path(os.environ[RELIABILITY_PARTS])
        (parts / f"{os.getpid()}.json").write_text(json.dumps(FIGURES))


def summaries(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/summary.json")}


def kill_group_when(process: subprocess.Popen, condition, timeout: float = 240.0) -> None:
    """SIGKILL the process group (the launcher and its joblib workers) once ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def reproduce(table: int, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scripts.reproduce", str(table), "scale=smoke", f"results_dir={results}", *extra]


def test_sigkill_mid_sweep_then_resume_gives_the_uninterrupted_table(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert subprocess.run(reproduce(4, clean), cwd=ROOT, env=ENV, capture_output=True).returncode == 0

    sweep = subprocess.Popen(reproduce(4, killed), cwd=ROOT, env=ENV, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_group_when(sweep, lambda: len(summaries(killed)) >= 2)
    before = summaries(killed)
    total = len(summaries(clean))
    assert 2 <= len(before) < total, f"the kill should land partway through the {total}-run sweep ({len(before)} done)"
    for run_hash in before:  # a record with a summary is whole: its curve was renamed into place first
        assert len(pd.read_csv(killed / "runs" / run_hash / "curve.csv")) == 200

    again = subprocess.run(reproduce(4, killed), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    after = summaries(killed)
    repeated = sum(after[h]["started"] != s["started"] for h, s in before.items())
    FIGURES["kills"].append({"what": f"SIGKILL of a table-4 sweep ({total} runs, joblib, 2 jobs)",
                             "before": len(before), "after": len(after), "lost": total - len(after),
                             "repeated": repeated})
    assert len(after) == total and repeated == 0, "every run must finish exactly once"

    columns = ["task", "optimizer", "runs", "ok", "diverged", "loss@steps=200", "multiplies", "epm"]
    pd.testing.assert_frame_equal(pd.read_csv(killed / "table_4.csv")[columns],
                                  pd.read_csv(clean / "table_4.csv")[columns])

    third = subprocess.run(reproduce(4, killed), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert third.returncode == 0 and " 0 to run" in third.stdout, "a third invocation must execute nothing new"
    assert summaries(killed) == after


RUN = ["task=noisy_quadratic", "optimizer=adam", "scale=smoke", "task.budget.smoke.steps=6000", "progress=false"]


def test_sigkill_mid_run_resumes_from_its_checkpoint_bitwise(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run_cli("-m", "runners.run", *RUN, f"results_dir={clean}").returncode == 0
    args = [sys.executable, "-m", "runners.run", *RUN, f"results_dir={killed}", "scale.checkpoint.every_steps=500"]
    run = subprocess.Popen(args, cwd=ROOT, env=ENV, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_group_when(run, lambda: bool(list(killed.glob("runs/*/checkpoint.pt"))))
    assert list(killed.glob("runs/*/checkpoint.pt")) and not summaries(killed), "killed after a checkpoint"
    resumed = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr + resumed.stdout
    (hash_a,), (hash_b,) = summaries(clean), summaries(killed)
    assert hash_a == hash_b, "checkpointing must not change the run's identity"
    a = pd.read_csv(clean / "runs" / hash_a / "curve.csv")
    b = pd.read_csv(killed / "runs" / hash_b / "curve.csv")
    pd.testing.assert_frame_equal(a[["eval", "step", "multiplies", "loss"]], b[["eval", "step", "multiplies", "loss"]],
                                  check_exact=True)
    assert not list(killed.glob("runs/*/checkpoint.pt")), "a finished run deletes its checkpoint"
    FIGURES["kills"].append({"what": "SIGKILL of a 6000-step run, checkpoint every 500 steps", "before": 0,
                             "after": 1, "lost": 0, "repeated": 0})


def test_two_sweeps_on_one_results_directory_lose_and_duplicate_nothing(results):
    args = [sys.executable, "-m", "runners.run", "-m", "task=rosenbrock", "optimizer=adam,momentum,yogi,rmsprop",
            "seed=0,1", "scale=smoke", "progress=false", f"results_dir={results}"]
    sweeps = [subprocess.Popen(args + [f"hydra.sweep.dir={results}/hydra{i}"], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [s.communicate(timeout=300)[0] for s in sweeps]
    assert all(s.returncode == 0 for s in sweeps), outputs
    executed = [m.group(1) for out in outputs for m in re.finditer(r"run (\w+) ok: ", out)]
    assert sorted(executed) == sorted(set(executed)), "a run was executed by both sweeps"
    assert len(summaries(results)) == 8 == len(executed), f"{len(executed)} runs executed, 8 expected"


@pytest.mark.parametrize("task", ["rosenbrock", "noisy_quadratic"])
def test_an_exploding_learning_rate_is_recorded_as_diverged(make_cfg, task):
    from runners.plan import make_plan
    from runners.run import execute

    cfg = make_cfg(f"task={task}", "optimizer=momentum", "optimizer.hparams.lr=1e4", "scale=smoke")
    assert execute(make_plan(cfg), cfg)["status"] == "diverged"


def test_a_table_with_a_diverging_optimizer_is_still_written(results):
    out = run_cli("-m", "scripts.reproduce", "4", "scale=smoke", f"results_dir={results}", "hparams.momentum.lr=1e4")
    assert out.returncode == 0, out.stderr[-2000:]
    table = (results / "table_4.md").read_text()
    momentum = next(line for line in table.splitlines() if "| momentum |" in line)
    assert "diverged (2/2)" in momentum, momentum
    assert "| adam |" in table


BAD_INPUTS = [
    (["-m", "runners.run", "task=nope"], "Could not find 'task/nope'"),
    (["-m", "runners.run", "optimizer=nope"], "Could not find 'optimizer/nope'"),
    (["-m", "runners.run", "scale=huge"], "Could not find 'scale/huge'"),
    (["-m", "scripts.reproduce", "99"], "optbench: unknown table 99; valid:"),
    (["-m", "runners.run", "optimizer.hparams.lr=-0.1"], "optbench: hyperparameter lr=-0.1 is outside its valid range"),
    (["-m", "runners.run", "optimizer.hparams.lr=fast"], "optbench: hyperparameter lr='fast' must be a number"),
    (["-m", "runners.run", "optimizer=lbfgs", "optimizer.hparams.history=2.5"], "must be an integer"),
    (["-m", "runners.run", "+optimizer.hparams.nesterov=true"], "optbench: optimizer 'adam' has no hyperparameter"),
    (["-m", "scripts.reproduce", "4", "hparams.adam.beta1=1.5"], "optbench: hyperparameter beta1=1.5 is outside"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a[2:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, args, message):
    results = tmp_path / "results"
    out = run_cli(*args, f"results_dir={results}", f"hydra.run.dir={tmp_path}/hydra")
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-1500:]
    assert not results.exists(), "nothing may be written for a bad input"
    first = next(line for line in out.stderr.splitlines() if message.split(":")[0].split("'")[0] in line)
    FIGURES["bad_inputs"].append((" ".join(args[2:]), first.strip()))


def test_unwritable_results_directory_fails_before_running(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = run_cli("-m", "runners.run", f"results_dir={blocker}/results", "progress=false")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"optbench: results directory {blocker}/results is not")
    FIGURES["bad_inputs"].append(("results_dir=<a path under a file>", out.stderr.strip().splitlines()[-1]))


def test_wandb_key_never_reaches_records_configs_or_logs(tmp_path):
    secret = "0123456789abcdef-not-a-real-key-" + "x" * 8
    env = {**ENV, "WANDB_API_KEY": secret, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = subprocess.run([sys.executable, "-m", "runners.run", "logger=wandb", f"logger.dir={tmp_path}/wandb",
                          f"results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/hydra", "progress=false"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in written) and any("wandb" in str(p) for p in written)
    leaks = [p for p in written if secret.encode() in p.read_bytes()]
    assert not leaks and secret not in out.stdout + out.stderr, f"the W&B key leaked into {leaks}"


class Interrupted(Exception):
    """Stands in for a kill: raised by the optimizer's step partway through a run."""


def _checkpoint_task(name: str) -> tuple[list[str], str | None]:
    """The smallest task the optimizer applies to, and the data folder that task reads (if any)."""
    import optimizers

    requires = optimizers.get(name).requires
    if "mlp" in requires:
        return ["task=twod", "task.options.hidden=5"], "ipnnl"
    if "hidden_matrices" in requires:
        return ["task=mnist_mlp2h", "+task.options.width=0.05", "task.options.batch_size=20",
                "task.options.eval_size=20"], "mnist"
    return ["task=noisy_quadratic", "task.options.dim=12"], None


@pytest.mark.parametrize("name", __import__("optimizers").names())
def test_every_optimizer_resumes_from_a_checkpoint_bitwise(make_cfg, tmp_path, name):
    """A run interrupted after its checkpoint at step 10 and resumed gives the uninterrupted run's curve
    exactly: every optimizer's state (LODO's network and meta-optimizer, L2L's LSTM state, AMOLF's
    groups, quasi-Newton histories, ...) round-trips through ``torch.load(weights_only=True)``."""
    from runners.checkpoint import Checkpointer
    from runners.loop import train
    from runners.plan import make_plan
    from runners.run import build

    overrides, data = _checkpoint_task(name)
    if data and not (Path(os.environ.get("OPTBENCH_DATA_DIR", "")) / data).is_dir():
        pytest.skip(f"{data}/ is not in OPTBENCH_DATA_DIR")
    plan = make_plan(make_cfg(f"optimizer={name}", *overrides, "scale=smoke"))
    os.environ["OPTBENCH_CACHE_DIR"] = str(tmp_path / "cache")
    budget = {"steps": 16, "eval_every": 4}

    def run(checkpointer=None, stop_at=None):
        task, optimizer = build(plan, torch.device("cpu"), Path(os.environ.get("OPTBENCH_DATA_DIR", ".")))
        if stop_at is not None:
            step, calls = optimizer.step, iter(range(10**6))

            def interrupted(closure):
                if next(calls) == stop_at:
                    raise Interrupted
                return step(closure)

            optimizer.step = interrupted
        return train(task, optimizer, budget, checkpointer=checkpointer)

    clean = run()
    checkpointer = Checkpointer(tmp_path / "checkpoint.pt", every_steps=10)
    with pytest.raises(Interrupted):
        run(checkpointer, stop_at=13)
    assert checkpointer.path.exists()
    resumed = run(checkpointer)
    for a, b in ((resumed.curve, clean.curve), (resumed.evals, clean.evals)):  # all but the clock
        pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    FIGURES["resumed"].append(name)
