"""Checkpoints of a long run (issue: kill mid-run, resume bitwise identically on the CPU).

A checkpoint is ``<record>/checkpoint.pt``: the loop's progress, the task's and the optimizer's
state and the global RNG state, written to a temporary file and renamed, read back with
``torch.load(weights_only=True)``. It is due every ``every_steps`` steps or every ``every_seconds``
of wall time, whichever is set; a finished run deletes it.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("optbench")


class Checkpointer:
    def __init__(self, path: Path, every_steps: int = 0, every_seconds: float = 0.0) -> None:
        if every_steps < 0 or every_seconds < 0:
            raise ValueError(f"checkpoint intervals must be >= 0, got {every_steps} steps, {every_seconds} s")
        self.path = Path(path)
        self.every_steps = int(every_steps)
        self.every_seconds = float(every_seconds)
        self._last = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self.every_steps or self.every_seconds)

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last >= self.every_seconds

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".checkpoint.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._last = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as error:
            log.warning("ignoring unreadable checkpoint %s (%s); starting the run afresh", self.path, error)
            return None
        log.info("resuming from %s at step %d", self.path, state["progress"]["step"])
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
