"""Shared fixtures: every test writes records into its own temporary results directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def make_cfg(results: Path):
    """Compose the Hydra config with overrides, as ``python -m runners.run`` would."""

    def make(*overrides: str):
        with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
            return compose("config", overrides=[f"results_dir={results}", "progress=false", *overrides])

    return make


def run_cli(*args: str, cwd: Path = ROOT, **kwargs):
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
