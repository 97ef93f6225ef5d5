"""One directory per run, named by the plan's hash (DESIGN.md, "Record").

``<results>/runs/<hash>/`` holds ``config.json`` (the effective configuration), ``curve.csv`` (one row
per loss evaluation), ``evals.csv`` (one row per evaluation of the task's metrics) and
``summary.json`` (status ok|diverged|failed, timings, multiplies, seeds, device, versions, git
revision). Every file is written to a temporary name and renamed, and ``summary.json`` is written
last, so a run is finished exactly when its summary exists and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

FINISHED = ("ok", "diverged")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g"))


def versions() -> dict[str, str]:
    import hydra

    return {"python": platform.python_version(), "torch": torch.__version__, "hydra": hydra.__version__,
            "pandas": pd.__version__}


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Record:
    """The record directory of one run."""

    def __init__(self, results_dir: str | Path, run_hash: str) -> None:
        self.dir = Path(results_dir) / "runs" / run_hash

    @contextlib.contextmanager
    def claim(self):
        """Yield True while this process holds the run's lock, False when another process does.
        An flock dies with its process, so a SIGKILLed sweep leaves no stale claim behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "run.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def summary(self) -> dict[str, Any] | None:
        """The summary if it exists and parses; a hand-broken file counts as absent (and is rerun)."""
        try:
            summary = json.loads((self.dir / "summary.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return summary if isinstance(summary, dict) else None

    def finished(self) -> bool:
        summary = self.summary()
        return summary is not None and summary.get("status") in FINISHED

    def curve(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / "curve.csv")

    def evals(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / "evals.csv")

    def write_params(self, state: dict) -> None:
        """The task's final state (``task.state_dict()``) as ``params.pt``, written atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".params.pt.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.dir / "params.pt")
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write(self, config: dict, curve: pd.DataFrame, evals: pd.DataFrame, summary: dict) -> None:
        atomic_write_text(self.dir / "config.json", json.dumps(config, indent=2, sort_keys=True))
        atomic_write_csv(self.dir / "curve.csv", curve)
        atomic_write_csv(self.dir / "evals.csv", evals)
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
