"""The command line as a user types it: a single run, bad names and bad values."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


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


def test_make_targets_run_the_scripts():
    """`make reproduce-table-N` for every table, `make test` and `make bench` reach their commands (dry run)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    tables = sorted(int(p.stem.split("_")[1]) for p in (root / "configs" / "experiment").glob("table_*.yaml"))
    for n in tables:
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", f"reproduce-table-{n}", "scale=smoke"],
                             cwd=root, capture_output=True, text=True)
        assert f"-m scripts.reproduce {n} scale=smoke" in out.stdout, (n, out.stdout, out.stderr)
    for target, command in (("test", "-m pytest"), ("bench", "-m scripts.bench"), ("report", "-m scripts.report")):
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=root, capture_output=True, text=True)
        assert command in out.stdout, (target, out.stdout, out.stderr)
