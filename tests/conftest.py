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
