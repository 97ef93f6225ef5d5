"""Reproduce one table: ``python -m scripts.reproduce 4 scale=quick [hydra overrides...]``.

1. Compose ``experiment/table_N.yaml`` and expand its sweep (every ``report.sweep`` combination x
   ``scale.seeds`` seeds) into run plans. Every plan is validated here, before anything runs. A table
   with ``report.applicable_only`` (table 14: every optimizer x every task) leaves out the pairs whose
   optimizer needs what the task does not offer (``runners.plan.unmet_requirements``) and lists why.
2. Launch the plans whose records are missing as one Hydra multirun (joblib launcher, ``jobs=2``; one
   per group of tasks that share their applicable optimizers when pairs are left out); finished runs
   are never repeated, so an interrupted table resumes where it stopped.
3. Aggregate the records into ``results/table_N.md``, ``.csv`` and PNG plots.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from optimizers.registry import ConfigError
from runners.plan import NotApplicable, RunPlan, make_plan
from runners.records import Record

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def tables() -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (CONFIGS / "experiment").glob("table_*.yaml"))


def compose_table(table: int, overrides: list[str]) -> DictConfig:
    if table not in tables():
        raise ConfigError(f"unknown table {table}; valid: {', '.join(map(str, tables()))}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=[f"+experiment=table_{table}", *overrides])


def sweep_axes(cfg: DictConfig) -> dict[str, list]:
    """The table's sweep axes plus the scale's seeds."""
    return {**OmegaConf.to_container(cfg.report.sweep, resolve=True), "seed": list(range(int(cfg.scale.seeds)))}


def sweep_overrides(cfg: DictConfig) -> list[list[str]]:
    """Every combination of the table's sweep, as Hydra override lists."""
    axes = sweep_axes(cfg)
    keys = list(axes)
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)]
            for values in itertools.product(*(axes[k] for k in keys))]


def choices(combo: list[str]) -> dict[str, str]:
    """A sweep combination (``["task=twod", "seed=0"]``) as a mapping of its keys to their values."""
    return dict(c.split("=", 1) for c in combo)


def _value_override(cfg: DictConfig, override: str) -> tuple[str, object] | None:
    """(key, typed value) when ``override`` only sets an existing plain key (``seed=3``,
    ``suite_table.kind=seconds``), which can be applied to an already composed config; None when it
    needs Hydra (a config group such as ``task=...``, or a key the config lacks)."""
    key, _, _ = override.partition("=")
    if not key.replace(".", "").replace("_", "").isalnum() or (CONFIGS / key.split(".")[0]).is_dir():
        return None
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node or isinstance(node._get_node(leaf), DictConfig):
        return None
    axes = sweep_axes(cfg)
    value = override.partition("=")[2]
    typed = next((v for v in axes.get(key, []) if str(v) == value), None)
    return (key, typed) if typed is not None else None


def plan_table(table: int, overrides: list[str], excluded: list[tuple[list[str], str]] | None = None
               ) -> tuple[DictConfig, list[tuple[list[str], RunPlan]]]:
    """The table's config and every run of its sweep, validated. Hydra composes once per combination
    of the config-group overrides; the plain values of the sweep (the seed, a table's own switches)
    are set on a copy. With ``report.applicable_only``, a pair whose optimizer needs what its task
    does not offer is left out and ``(combination, reason)`` appended to ``excluded``."""
    cfg = compose_table(table, overrides)
    applicable_only = bool(cfg.report.get("applicable_only"))
    base = [f"+experiment=table_{table}", *overrides]
    composed: dict[tuple[str, ...], DictConfig] = {}
    runs = []
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for combo in sweep_overrides(cfg):
            values = [_value_override(cfg, c) for c in combo]
            structural = tuple(c for c, v in zip(combo, values, strict=True) if v is None)
            if structural not in composed:
                composed[structural] = compose("config", overrides=[*base, *structural])
            run_cfg = copy.deepcopy(composed[structural])
            for key, value in (v for v in values if v is not None):
                OmegaConf.update(run_cfg, key, value, merge=False)
            try:
                runs.append((combo, make_plan(run_cfg)))
            except NotApplicable as error:
                if not applicable_only:
                    raise
                if excluded is not None:
                    excluded.append((combo, str(error)))
    return cfg, runs


def unavailable_data(cfg: DictConfig, plans: list[RunPlan]) -> dict[str, str]:
    """Task name -> the DataError message, for the tasks of ``plans`` whose data set is missing here
    and cannot be downloaded. Each distinct task is built once on the CPU to find out."""
    import torch

    import tasks
    from tasks.data import DataError

    missing: dict[str, str] = {}
    seen: set[str] = set()
    for plan in plans:
        key = json.dumps(plan.task, sort_keys=True)
        if key in seen or plan.task["name"] in missing:
            continue
        seen.add(key)
        try:
            tasks.get(plan.task["name"])(seed=0, device=torch.device("cpu"), dtype=plan.dtype,
                                         data_dir=Path(cfg.data_dir), **plan.task["options"])
        except DataError as error:
            missing[plan.task["name"]] = str(error)
    return missing


def applicable_groups(cfg: DictConfig, excluded: list[tuple[list[str], str]]) -> list[dict[str, list]]:
    """The sweep's axes split into groups of tasks that share their applicable optimizers (one group,
    the whole sweep, when nothing is excluded)."""
    axes = sweep_axes(cfg)
    if not excluded:
        return [axes]
    left_out = {(choices(combo)["task"], choices(combo)["optimizer"]) for combo, _ in excluded}
    groups: dict[tuple, list] = {}
    for task in axes["task"]:
        optimizers = tuple(o for o in axes["optimizer"] if (str(task), str(o)) not in left_out)
        if optimizers:
            groups.setdefault(optimizers, []).append(task)
    return [{**axes, "task": tasks, "optimizer": list(optimizers)} for optimizers, tasks in groups.items()]


def launch(table: int, overrides: list[str], cfg: DictConfig, jobs: int, skip_tasks: tuple[str, ...] = (),
           axes: dict[str, list] | None = None) -> int:
    """One Hydra multirun over the table's sweep, or over ``axes`` when given (less the tasks in
    ``skip_tasks``, when the sweep has a task axis); each job skips its finished record."""
    axes = dict(axes or sweep_axes(cfg))
    if "task" in axes:
        axes["task"] = [name for name in axes["task"] if name not in skip_tasks]
        if not axes["task"]:
            return 0
    sweep = [f"{k}={','.join(str(v) for v in values)}" for k, values in axes.items()]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    launcher = ["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    command = [sys.executable, "-m", "runners.run", "-m", f"+experiment=table_{table}", *overrides, *sweep,
               *launcher, f"threads={threads}", "progress=false"]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=int)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. scale=smoke")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("OPTBENCH_JOBS", "2")))
    args = parser.parse_args(argv)

    from scripts.tables import write_table  # matplotlib is imported only when a table is written

    excluded: list[tuple[list[str], str]] = []
    try:
        cfg, runs = plan_table(args.table, args.overrides, excluded)
    except ConfigError as error:
        print(f"optbench: {error}", file=sys.stderr)
        return 2
    missing = [plan for _, plan in runs if not Record(cfg.results_dir, plan.hash).finished()]
    left_out = f" ({len(excluded)} left out: the optimizer does not apply to the task)" if excluded else ""
    print(f"table {args.table} at scale={cfg.scale.name}: {len(runs)} runs{left_out}, {len(missing)} to run",
          flush=True)
    no_data = unavailable_data(cfg, missing) if missing else {}
    for name, message in no_data.items():
        print(f"optbench: task {name} is not run, its data is missing: {message}", file=sys.stderr)
    runnable = [plan for plan in missing if plan.task["name"] not in no_data]
    if runnable and (not no_data or "task" in sweep_axes(cfg)):
        runnable_hashes = {plan.hash for plan in runnable}
        pending = {choices(combo).get("task") for combo, plan in runs
                   if plan.hash in runnable_hashes}
        code = 0
        for axes in applicable_groups(cfg, excluded):
            if "task" not in axes or pending & {str(t) for t in axes["task"]}:
                code = launch(args.table, args.overrides, cfg, args.jobs, tuple(no_data), axes) or code
        if code != 0:
            print(f"optbench: the sweep exited with {code}; writing the table from the finished runs",
                  file=sys.stderr)
    paths = write_table(args.table, cfg, [plan for _, plan in runs], [combo for combo, _ in runs], no_data,
                        excluded)
    for path in paths:
        print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
