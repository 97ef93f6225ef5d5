"""Optional experiment trackers. Records (CSV) are always written by ``runners.records``; a logger
only mirrors them. W&B runs offline unless ``WANDB_MODE`` says otherwise, grouped by table, so
``wandb sync`` later shows one panel set per table. The API key is read by wandb itself from the
environment and never copied into a record or config."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
from omegaconf import DictConfig


class NullLogger:
    def log_eval(self, row: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any], curve: pd.DataFrame | None) -> None:
        pass


class WandbLogger(NullLogger):
    def __init__(self, cfg: DictConfig, plan, table: Any) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", cfg.mode)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.get("entity"), dir=cfg.dir,
            group=f"table_{table}" if table is not None else "adhoc",
            name=f"{plan.task['name']}/{plan.optimizer['name']}/seed{plan.config['seed']}",
            config=plan.config, reinit="finish_previous",
        )

    def log_eval(self, row):
        self.run.log({f"eval/{k}": v for k, v in row.items()})

    def finish(self, summary, curve):
        if curve is not None and len(curve):
            stride = max(1, len(curve) // 2000)  # a dashboard needs shape, not every point
            for row in curve.iloc[::stride].itertuples(index=False):
                self.run.log({"train/loss": row.loss, "train/eval": row.eval, "train/seconds": row.seconds,
                              "train/multiplies": row.multiplies})
        self.run.summary.update({k: v for k, v in summary.items() if k != "traceback"})
        self.run.finish()


def make_logger(cfg: DictConfig, plan, table: Any) -> NullLogger:
    if cfg.name == "csv":
        return NullLogger()
    if cfg.name == "wandb":
        return WandbLogger(cfg, plan, table)
    raise ValueError(f"unknown logger {cfg.name!r}; valid: csv, wandb")
