"""Reproduce one table: ``python -m scripts.reproduce 4 scale=quick [hydra overrides...]``.

1. Compose ``experiment/table_N.yaml`` and expand its sweep (every ``report.sweep`` combination x
   ``scale.seeds`` seeds) into run plans. Every plan is validated here, before anything runs.
2. Launch the plans whose records are missing as one Hydra multirun (joblib launcher, ``jobs=2``);
   finished runs are never repeated, so an interrupted table resumes where it stopped.
3. Aggregate the records into ``results/table_N.md``, ``.csv`` and PNG plots.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from optimizers.registry import ConfigError
from runners.plan import RunPlan, make_plan
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


def plan_table(table: int, overrides: list[str]) -> tuple[DictConfig, list[tuple[list[str], RunPlan]]]:
    """The table's config and every run of its sweep, validated."""
    cfg = compose_table(table, overrides)
    base = [f"+experiment=table_{table}", *overrides]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        runs = [(combo, make_plan(compose("config", overrides=[*base, *combo]))) for combo in sweep_overrides(cfg)]
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


def launch(table: int, overrides: list[str], cfg: DictConfig, jobs: int, skip_tasks: tuple[str, ...] = ()) -> int:
    """One Hydra multirun over the table's sweep (less the tasks in ``skip_tasks``, when the sweep
    has a task axis); each job skips its finished record."""
    axes = sweep_axes(cfg)
    if "task" in axes:
        axes["task"] = [name for name in axes["task"] if name not in skip_tasks]
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

    try:
        cfg, runs = plan_table(args.table, args.overrides)
    except ConfigError as error:
        print(f"optbench: {error}", file=sys.stderr)
        return 2
    missing = [plan for _, plan in runs if not Record(cfg.results_dir, plan.hash).finished()]
    print(f"table {args.table} at scale={cfg.scale.name}: {len(runs)} runs, {len(missing)} to run", flush=True)
    no_data = unavailable_data(cfg, missing) if missing else {}
    for name, message in no_data.items():
        print(f"optbench: task {name} is not run, its data is missing: {message}", file=sys.stderr)
    runnable = [plan for plan in missing if plan.task["name"] not in no_data]
    if runnable and (not no_data or "task" in sweep_axes(cfg)):
        code = launch(args.table, args.overrides, cfg, args.jobs, tuple(no_data))
        if code != 0:
            print(f"optbench: the sweep exited with {code}; writing the table from the finished runs",
                  file=sys.stderr)
    paths = write_table(args.table, cfg, [plan for _, plan in runs], [combo for combo, _ in runs], no_data)
    for path in paths:
        print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
