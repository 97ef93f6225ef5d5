"""Run one configuration, or sweep many with ``-m``:

    python -m runners.run task=rosenbrock optimizer=adam seed=3
    python -m runners.run -m task=noisy_quadratic optimizer=adam,momentum seed=0,1 hydra/launcher=joblib

A run whose record is finished (ok or diverged) is skipped unless ``force=true``; a run that raises
is recorded as failed and the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import optimizers
import tasks
from optimizers.registry import ConfigError
from runners.checkpoint import Checkpointer
from runners.loggers import make_logger
from runners.loop import train
from runners.plan import RunPlan, make_plan
from runners.records import Record, git_revision, versions
from tasks.base import Task

log = logging.getLogger("optbench")


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def ensure_writable(results_dir: str | Path) -> None:
    """Fail before any work when the results directory cannot be written."""
    runs = Path(results_dir) / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        probe = runs / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"results directory {results_dir} is not writable ({error.strerror})") from None


def execute(plan: RunPlan, cfg: DictConfig) -> dict[str, Any] | None:
    """Run ``plan`` unless its record is finished or another process holds it; write the record;
    return the summary (None when another process is running it)."""
    ensure_writable(cfg.results_dir)
    record = Record(cfg.results_dir, plan.hash)
    with record.claim() as mine:
        if not mine:
            log.info("run %s is being run by another process; skipping", plan.hash)
            return None
        previous = record.summary()
        if previous is None and (record.dir / "summary.json").exists():
            log.warning("record %s has an unreadable summary.json; rerunning it", record.dir)
        if record.finished() and not cfg.force:
            log.info("run %s already finished (%s); skipping", plan.hash, previous["status"])
            return previous
        return _run(plan, cfg, record)


def build(plan: RunPlan, device: torch.device, data_dir: Path) -> tuple[Task, torch.optim.Optimizer]:
    """The run's task and optimizer, each created right after seeding torch with its derived seed."""
    torch.manual_seed(plan.config["task_seed"])
    task = tasks.get(plan.task["name"])(seed=plan.config["task_seed"], device=device, dtype=plan.dtype,
                                        data_dir=data_dir, **plan.task["options"])
    torch.manual_seed(plan.config["optimizer_seed"])
    return task, optimizers.get(plan.optimizer["name"]).build(task.parameters(), **plan.optimizer["hparams"])


def _run(plan: RunPlan, cfg: DictConfig, record: Record) -> dict[str, Any]:
    device = pick_device(cfg.device)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    os.environ["OPTBENCH_CACHE_DIR"] = str(Path(cfg.results_dir, "cache").resolve())  # builders' artefacts (L2L)
    task, optimizer = build(plan, device, Path(cfg.data_dir))
    spec = optimizers.get(plan.optimizer["name"])
    analytic = spec.multiplies_per_step(task) if spec.multiplies_per_step else None
    checkpoint = cfg.scale.get("checkpoint") or {}
    checkpointer = Checkpointer(record.dir / "checkpoint.pt", checkpoint.get("every_steps", 0),
                                checkpoint.get("every_seconds", 0))
    if cfg.force:
        checkpointer.clear()

    logger = make_logger(cfg.logger, plan, cfg.get("table"))
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    summary: dict[str, Any] = {
        "hash": plan.hash, "task": plan.task["name"], "optimizer": plan.optimizer["name"],
        "seed": plan.config["seed"], "task_seed": plan.config["task_seed"],
        "optimizer_seed": plan.config["optimizer_seed"], "scale": plan.config["scale"],
        "table": cfg.get("table"), "device": str(device), "dtype": plan.task["dtype"],
        "torch_threads": torch.get_num_threads(), "versions": versions(), "git_revision": git_revision(),
        "started": started, "timing_policy": "training time only; evaluation and logging excluded; "
        "warm-up steps excluded and reported separately; device synchronised before clock reads",
        **task.facts(),
    }
    try:
        result = train(task, optimizer, plan.budget, clip_grad_norm=plan.config["clip_grad_norm"],
                       multiplies_per_step=analytic, progress=cfg.progress, on_eval=logger.log_eval,
                       checkpointer=checkpointer if checkpointer.enabled else None)
    except Exception as error:  # recorded, and the sweep goes on
        summary.update(status="failed", error=f"{type(error).__name__}: {error}",
                       traceback=traceback.format_exc(limit=8))
        record.write(plan.config, pd.DataFrame(), pd.DataFrame(), summary)
        logger.finish(summary, None)
        log.error("run %s failed: %s", plan.hash, summary["error"])
        return summary
    summary.update(status=result.status, **result.stats,
                   finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if plan.budget.get("save_params"):  # before the summary, which marks the record finished
        record.write_params(task.state_dict())
    record.write(plan.config, result.curve, result.evals, summary)
    checkpointer.clear()
    logger.finish(summary, result.curve)
    log.info("run %s %s: %s on %s, seed %d, final loss %.6g, %d steps in %.2fs",
             plan.hash, result.status, plan.optimizer["name"], plan.task["name"], plan.config["seed"],
             summary["final_loss"], summary["steps"], summary["train_seconds"])
    return summary


def final_window_loss(record: Record) -> float:
    """The run's score for tuners: the mean training loss over the last 10% of its curve (entries
    floor(0.9 n) onward, LODO Appendix E); +inf when the run diverged, failed or is missing."""
    summary = record.summary() or {}
    if summary.get("status") != "ok":
        return math.inf
    losses = record.curve()["loss"]
    score = float(losses.iloc[int(0.9 * len(losses)):].mean()) if len(losses) else math.nan
    return score if math.isfinite(score) else math.inf


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One run; returns its final-window loss so that a Hydra sweeper (Optuna) can minimise it."""
    try:
        plan = make_plan(cfg)
        log.debug("effective config:\n%s", OmegaConf.to_yaml(plan.config))
        execute(plan, cfg)
    except ConfigError as error:
        print(f"optbench: {error}", file=sys.stderr)
        sys.exit(2)
    return final_window_loss(Record(cfg.results_dir, plan.hash))


if __name__ == "__main__":
    main()
