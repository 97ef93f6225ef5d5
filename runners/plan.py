"""Turn a composed Hydra config into a validated run plan, before any work starts.

The plan is the *effective* configuration of one run: the task with its options, the selected
scale's budget, the optimizer with its hyperparameters (the table's per-optimizer values merged over
the optimizer's defaults), and the seeds. Its hash names the run's record directory, so anything
that changes results changes the hash and nothing else does (paths, loggers, progress bars).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import optimizers
import tasks
from optimizers.registry import ConfigError, OptimizerSpec
from tasks.base import Task

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# multiplies: a cap on cumulative multiplies; save_params: write the final parameters (params.pt) into the record
BUDGET_KEYS = {"steps", "seconds", "eval_every", "warmup_steps", "milestones", "multiplies", "save_params"}


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from (base seed, task, [optimizer], repetition)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class RunPlan:
    config: dict[str, Any]  # the effective, hashed configuration
    hash: str

    @property
    def task(self) -> dict[str, Any]:
        return self.config["task"]

    @property
    def optimizer(self) -> dict[str, Any]:
        return self.config["optimizer"]

    @property
    def budget(self) -> dict[str, Any]:
        return self.config["budget"]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.task["dtype"]]


class NotApplicable(ConfigError):
    """The optimizer needs something the task does not offer. A table that sweeps every optimizer over
    every task (``report.applicable_only``) leaves such pairs out and lists this message as the reason."""


def unmet_requirements(spec: OptimizerSpec, task_cls: type[Task]) -> str | None:
    """Why ``spec`` cannot run on ``task_cls`` (its ``requires`` against the task's ``offers``), or None
    when it can. The suite's one applicability rule: ``make_plan``, table sweeps and the compatibility
    test all use it."""
    missing = spec.requires - task_cls.offers
    if not missing:
        return None
    return (f"optimizer {spec.name!r} needs {', '.join(sorted(missing))}, which task {task_cls.name!r} "
            f"does not offer (it offers: {', '.join(sorted(task_cls.offers)) or 'gradients only'})")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def make_plan(cfg: DictConfig) -> RunPlan:
    """Validate names, hyperparameters, budget and requirements; raise ConfigError on the first
    problem, with a message that names the bad value and lists the valid ones."""
    task_cfg = _plain(cfg.task)
    opt_cfg = _plain(cfg.optimizer)
    task_cls = tasks.get(task_cfg["name"])
    spec = optimizers.get(opt_cfg["name"])

    overrides = (_plain(cfg.get("hparams")) or {}).get(spec.name, {})
    hparams = spec.validate({**(opt_cfg.get("hparams") or {}), **overrides})

    reason = unmet_requirements(spec, task_cls)
    if reason:
        raise NotApplicable(reason)
    if task_cfg.get("dtype", "float32") not in DTYPES:
        raise ConfigError(f"task dtype {task_cfg['dtype']!r} invalid; valid: {', '.join(DTYPES)}")

    scale = cfg.scale.name
    budgets = task_cfg.get("budget", {})
    if scale not in budgets:
        raise ConfigError(f"task {task_cls.name!r} has no budget for scale {scale!r}; has: {', '.join(budgets)}")
    budget = dict(budgets[scale])
    # a table may change the budget of one optimizer at one scale (``budgets: {name: {scale: {...}}}``)
    budget.update(((_plain(cfg.get("budgets")) or {}).get(spec.name) or {}).get(scale) or {})
    unknown = set(budget) - BUDGET_KEYS
    if unknown or not budget.get("steps", 0) >= 1:
        raise ConfigError(f"task {task_cls.name!r} budget for scale {scale!r} is invalid: {budget} "
                          f"(needs steps >= 1; keys: {', '.join(sorted(BUDGET_KEYS))})")

    seed, base_seed = int(cfg.seed), int(cfg.base_seed)
    config = {
        "task": {"name": task_cls.name, "dtype": task_cfg.get("dtype", "float32"),
                 "options": task_cfg.get("options") or {}},
        "optimizer": {"name": spec.name, "hparams": hparams},
        "clip_grad_norm": cfg.get("clip_grad_norm"),
        "scale": scale,
        "budget": budget,
        "seed": seed,
        "base_seed": base_seed,
        "task_seed": derive_seed(base_seed, task_cls.name, seed),
        "optimizer_seed": derive_seed(base_seed, task_cls.name, spec.name, seed),
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return RunPlan(config=config, hash=digest)
