"""Shared fixtures: every test writes records into its own temporary results directory."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runners.records import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")
os.environ.setdefault("WANDB_MODE", "disabled")
RELIABILITY_PARTS = "OPTBENCH_RELIABILITY_PARTS"  # where each test process leaves its reliability figures


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist); workers inherit this
        os.environ[RELIABILITY_PARTS] = tempfile.mkdtemp(prefix="optbench-reliability-")


def pytest_sessionfinish(session) -> None:
    """Merge the reliability figures of every test process into ``results/reliability.md`` when the
    whole fault suite ran (every kind of figure present)."""
    if hasattr(session.config, "workerinput") or RELIABILITY_PARTS not in os.environ:
        return
    figures: dict[str, list] = {"kills": [], "bad_inputs": [], "resumed": []}
    for part in sorted(Path(os.environ[RELIABILITY_PARTS]).glob("*.json")):
        for key, values in json.loads(part.read_text()).items():
            figures[key] += values
        part.unlink()
    Path(os.environ[RELIABILITY_PARTS]).rmdir()
    if all(figures.values()):
        write_reliability_report(figures)


def write_reliability_report(figures: dict[str, list]) -> None:
    """``results/reliability.md`` from the merged figures of a run of the whole module."""
    lines = ["# Reliability", "", "Written by `tests/test_reliability.py` in the last `make test` run.", "",
             "| kill | runs finished before | runs after resume | runs lost | runs repeated |", "|---|---|---|---|---|"]
    lines += [f"| {k['what']} | {k['before']} | {k['after']} | {k['lost']} | {k['repeated']} |"
              for k in sorted(figures["kills"], key=lambda k: k["what"])]
    lines += ["", f"Optimizers interrupted after a mid-run checkpoint and resumed to the uninterrupted curve "
              f"bit for bit: {len(figures['resumed'])} ({', '.join(sorted(figures['resumed']))})."]
    lines += ["", f"Bad inputs tried: {len(figures['bad_inputs'])}, each a one-line error with nothing written:", ""]
    lines += [f"- `{cmd}` -> {msg}" for cmd, msg in sorted(figures["bad_inputs"])]
    (ROOT / "results").mkdir(exist_ok=True)
    atomic_write_text(ROOT / "results" / "reliability.md", "\n".join(lines) + "\n")


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


if "OPTBENCH_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["OPTBENCH_DATA_DIR"] = str(ROOT.parent / "shared" / "data")


def write_tiny_cifar10(root: Path, train_per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    """A small CIFAR-10 in torchvision's real on-disk format: ``root/cifar10/cifar-10-batches-py``
    with five pickled training batches, a test batch and ``batches.meta``."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, name: str) -> None:
        payload = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                   "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))

    for i in range(1, 6):
        batch(train_per_batch, f"data_batch_{i}")
    batch(test, "test_batch")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": train_per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> Path:
    """A data directory holding a small CIFAR-10 in the real format (for tasks and tests)."""
    return write_tiny_cifar10(tmp_path / "data")
