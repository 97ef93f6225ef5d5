"""The command line as a user types it: single runs, bad names, Hydra multiruns with joblib, and a
sweep killed with SIGKILL and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import ROOT, run_cli


def summaries(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/summary.json")}


def test_single_run_from_the_command_line(results):
    out = run_cli("-m", "runners.run", "task=rosenbrock", "optimizer=adam", "seed=3", f"results_dir={results}",
                  "progress=false")
    assert out.returncode == 0, out.stderr
    (summary,) = summaries(results).values()
    assert summary["status"] == "ok" and summary["seed"] == 3


def test_unknown_group_option_lists_the_valid_ones(results):
    out = run_cli("-m", "runners.run", "optimizer=adamm", f"results_dir={results}")
    assert out.returncode != 0
    assert "Could not find 'optimizer/adamm'" in out.stderr and "adam" in out.stderr.split("Available options")[1]
    assert not results.exists(), "nothing may be written for a bad name"


def test_bad_hyperparameter_is_one_clear_line_and_writes_nothing(results):
    out = run_cli("-m", "runners.run", "optimizer=adam", "optimizer.hparams.beta2=1.5", f"results_dir={results}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "optbench: hyperparameter beta2=1.5 is outside its valid range [0, 1)")
    assert not results.exists()


def test_unknown_table_lists_the_valid_ones(results):
    out = run_cli("-m", "scripts.reproduce", "99", f"results_dir={results}")
    assert out.returncode == 2 and "unknown table 99; valid: " in out.stderr and "4" in out.stderr


SWEEP = ["-m", "runners.run", "-m", "task=noisy_quadratic", "optimizer=adam,momentum,yogi", "seed=0,1",
         "scale=smoke", "hydra/launcher=local", "progress=false"]


def test_joblib_multirun_runs_once_and_resumes_after_sigkill(results, tmp_path):
    args = [sys.executable, *SWEEP, f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(summaries(results)) < 2 and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)  # the whole group: the launcher and its joblib workers
    sweep.wait()
    before = summaries(results)
    assert 2 <= len(before) < 6, f"the kill should land partway through the sweep ({len(before)} of 6 done)"
    for run_hash in before:  # a record with a summary is whole: its curve was renamed into place first
        assert len(pd.read_csv(results / "runs" / run_hash / "curve.csv")) == 500

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    after = summaries(results)
    assert len(after) == 6 and all(s["status"] == "ok" for s in after.values())
    for run_hash, summary in before.items():
        assert after[run_hash]["started"] == summary["started"], "a finished run was run again"

    third = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert third.returncode == 0
    assert summaries(results) == after, "a third invocation must execute nothing new"
