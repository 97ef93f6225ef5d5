"""The genetic hyperparameter tuner of LODO's Appendix E (papers/lodo.md §6.2):

    python -m scripts.tune 4 adam scale=quick [--jobs 2] [hydra overrides...]     # or: make tune TABLE=4 OPTIMIZER=adam

1. Hyperparameters live in normalised coordinates: z = ln(1 - h) for names containing "momentum" or
   "beta" (inverse h = max(0, 1 - e^z)), z = ln h for everything else (RMSprop's rho included).
2. Generation 0 is centred on the optimizer's defaults (``configs/optimizer/<name>.yaml``). Generation
   g samples P_g children z ~ N(mu, sigma_g^2 I); each trains for T_g steps with its own seed, as a
   normal run record (``results/runs/<hash>``), all children of a generation in one Hydra multirun
   (joblib launcher, ``--jobs`` at a time). A child's generated config sits in
   ``<results_dir>/cache/tune/<name>/gen_<g>/tune_child/``; a child whose values fall outside the
   optimizer's valid ranges scores +inf without running.
3. Score = mean training loss over the last 10% of the curve (NaN, diverged or failed = +inf); the best
   min(#finite, P_g / 2) children are kept and their mean z is the next centre. sigma is not adapted:
   it follows the schedule (``configs/tuner/<task>.yaml``, the paper's Table 5 at scale=paper, shorter
   ones at quick and smoke).
4. The tuned values (the final centre, un-normalised) are written to
   ``configs/tuned/table_<N>_<scale>.yaml`` as ``hparams: {<optimizer>: {...}}``; a table picks them up
   with ``+tuned=table_<N>_<scale>`` (e.g. ``make reproduce-table-4 ARGS=+tuned=table_4_quick``).

An interrupted tune resumes: sampling is seeded, and children whose records are finished are skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import optimizers
from optimizers.registry import ConfigError
from runners.plan import make_plan
from runners.records import Record, atomic_write_text
from runners.run import final_window_loss
from scripts.reproduce import CONFIGS, ROOT, compose_table

MOMENTUM_LIKE = ("momentum", "beta")


def momentum_like(name: str) -> bool:
    return any(key in name for key in MOMENTUM_LIKE)


def normalise(name: str, h: float) -> float:
    """§6.2 coordinates: ln(1 - h) for momentum/beta hyperparameters, ln h otherwise."""
    return math.log(1.0 - h) if momentum_like(name) else math.log(h)


def denormalise(name: str, z: float) -> float:
    return max(0.0, 1.0 - math.exp(z)) if momentum_like(name) else math.exp(z)


def select(scores: list[float], population: int) -> list[int]:
    """Indices of the best min(#finite, population // 2) scores; NaN counts as +inf."""
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    return sorted(finite, key=lambda i: scores[i])[: min(len(finite), population // 2)]


@dataclass(frozen=True)
class Schedule:
    sigma: list[float]
    steps: list[int]
    population: list[int]

    @classmethod
    def load(cls, task: str, scale: str) -> Schedule:
        path = CONFIGS / "tuner" / f"{task}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "optimizers")
            raise ConfigError(f"no tuner schedule for task {task!r} ({path}); tasks with one: {', '.join(known)}")
        schedules = yaml.safe_load(path.read_text())["schedules"]
        if scale not in schedules:
            raise ConfigError(f"tuner schedule {path.name} has no scale {scale!r}; has: {', '.join(schedules)}")
        entry = schedules[scale]
        n = len(entry["sigma"])
        pop = entry["population"]
        schedule = cls([float(s) for s in entry["sigma"]], [int(t) for t in entry["steps"]],
                       [int(p) for p in pop] if isinstance(pop, list) else [int(pop)] * n)
        if not n == len(schedule.steps) == len(schedule.population) or min(schedule.population) < 2:
            raise ConfigError(f"tuner schedule {path.name}[{scale}] needs equally long sigma/steps/population "
                              f"lists and populations >= 2, got {entry}")
        return schedule


def tuned_names(optimizer: str, defaults: dict[str, Any]) -> list[str]:
    """The hyperparameters the tuner searches: ``configs/tuner/optimizers.yaml``, else every float
    hyperparameter except eps whose default is positive (or momentum-like)."""
    listed = yaml.safe_load((CONFIGS / "tuner" / "optimizers.yaml").read_text())["tuned"]
    if optimizer in listed:
        names = list(listed[optimizer])
    else:
        schema = optimizers.get(optimizer).schema
        names = [k for k, v in defaults.items() if schema[k].kind is float and not k.startswith("eps")
                 and isinstance(v, int | float) and (v > 0 or momentum_like(k))]
    unknown = [n for n in names if n not in defaults]
    if unknown or not names:
        raise ConfigError(f"cannot tune {optimizer!r}: tuned names {names} vs its hyperparameters {sorted(defaults)}")
    return names


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=overrides)


def _yaml_float(value: float) -> str:
    text = f"{value:.7g}"
    if "e" in text and "." not in text.split("e")[0]:
        text = text.replace("e", ".0e")  # YAML 1.1 floats need a dot: 1e-07 would load as a string
    return text


def child_config(optimizer: str, hparams: dict[str, float], seed: int, scale: str, steps: int) -> str:
    values = ", ".join(f"{k}: {_yaml_float(v)}" for k, v in hparams.items())
    return (f"# @package _global_\n# generated by scripts.tune\nseed: {seed}\nhparams:\n  {optimizer}: {{{values}}}\n"
            f"task:\n  budget:\n    {scale}: {{steps: {steps}, seconds: 0, eval_every: 0, "
            f"milestones: {{steps: [{steps}], seconds: []}}}}\n")


def write_tuned(path: Path, table: int, scale: str, optimizer: str, values: dict[str, float], note: str) -> None:
    """Merge ``values`` as ``hparams.<optimizer>`` into the tuned config of a table (others are kept)."""
    hparams, notes = {}, {}
    if path.exists():
        hparams = (yaml.safe_load(path.read_text()) or {}).get("hparams") or {}
        for line in path.read_text().splitlines():
            name = line[2:].split(":", 1)[0]
            if line.startswith("# ") and name in hparams:
                notes[name] = line
    hparams[optimizer] = values
    notes[optimizer] = f"# {optimizer}: {note}"
    lines = ["# @package _global_",
             f"# Hyperparameters tuned by scripts.tune (LODO Appendix E) for table {table} at scale={scale}.",
             f"# Use: make reproduce-table-{table} ARGS=+tuned={path.stem}  (they override the table's hparams)",
             *[notes[name] for name in sorted(hparams) if name in notes], "hparams:"]
    for name in sorted(hparams):
        lines.append(f"  {name}: {{{', '.join(f'{k}: {_yaml_float(v)}' for k, v in hparams[name].items())}}}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def tune(table: int, optimizer: str, overrides: list[str], jobs: int, out_dir: Path, seed: int = 0) -> dict[str, float]:
    cfg = compose_table(table, overrides)
    task, scale, results_dir = cfg.task.name, cfg.scale.name, Path(cfg.results_dir)
    # the tuner tunes on the table's task, with the optimizer's own defaults (not the table's hparams)
    base = [f"task={task}", f"optimizer={optimizer}", *[o for o in overrides if not o.startswith("+experiment")]]
    base_cfg = _compose(base)
    OmegaConf.set_struct(base_cfg, False)  # children add hparams.<optimizer>, as their _global_ config does
    defaults = OmegaConf.to_container(base_cfg.optimizer.hparams, resolve=True)
    optimizers.get(optimizer).validate(defaults)
    names = tuned_names(optimizer, defaults)
    schedule = Schedule.load(task, scale)
    work = results_dir / "cache" / "tune" / f"table_{table}_{optimizer}_{scale}_seed{seed}"
    mu = np.array([normalise(n, float(defaults[n])) for n in names])
    history: list[dict[str, Any]] = []
    print(f"tuning {optimizer} on {task} (table {table}, scale={scale}): {', '.join(names)} from the defaults "
          f"{ {n: defaults[n] for n in names} }; {len(schedule.sigma)} generations", flush=True)
    for g, (sigma, steps, population) in enumerate(zip(schedule.sigma, schedule.steps, schedule.population,
                                                        strict=True)):
        rng = np.random.default_rng([seed, g])
        zs = mu + sigma * rng.standard_normal((population, len(names)))
        gen_dir = work / f"gen_{g}"
        children, launch = [], []
        for i, z in enumerate(zs):
            values = {n: denormalise(n, float(v)) for n, v in zip(names, z, strict=True)}
            child_seed = 100_000 * (seed + 1) + 1000 * g + i
            text = child_config(optimizer, values, child_seed, scale, steps)
            atomic_write_text(gen_dir / "tune_child" / f"c{i}.yaml", text)
            child = {"z": z.tolist(), "hparams": values, "seed": child_seed}
            try:  # the child's plan: its _global_ config merged last, as `+tune_child=c<i>` does
                child["hash"] = make_plan(OmegaConf.merge(base_cfg, OmegaConf.create(text))).hash
                launch.append(f"c{i}")
            except ConfigError as error:
                child["error"] = str(error)
            children.append(child)
        if launch:
            code = run_generation(base, gen_dir, launch, jobs)
            if code:
                print(f"  generation {g}: the multirun exited with {code}; missing children score +inf", flush=True)
        scores = [final_window_loss(Record(results_dir, c["hash"])) if "hash" in c else math.inf for c in children]
        chosen = select(scores, population)
        for child, score in zip(children, scores, strict=True):
            child["score"] = score
        if chosen:
            mu = zs[chosen].mean(axis=0)
        centre = {n: denormalise(n, float(v)) for n, v in zip(names, mu, strict=True)}
        best = min(scores)
        history.append({"generation": g, "names": names, "sigma": sigma, "steps": steps, "population": population,
                        "children": children, "selected": chosen, "centre": centre})
        atomic_write_text(work / "history.json", json.dumps(history, indent=1, default=float))
        print(f"  generation {g}: sigma {sigma:g}, T {steps}, {len(chosen)}/{population} kept, best score "
              f"{best:.6g}, centre {_fmt(centre)}", flush=True)
    tuned = {n: denormalise(n, float(v)) for n, v in zip(names, mu, strict=True)}
    extra = yaml.safe_load((CONFIGS / "tuner" / f"{task}.yaml").read_text()).get("halve_first_for_long_run")
    note = (f"tuned on {task} at scale={scale}: {len(schedule.sigma)} generations, final population "
            f"{schedule.population[-1]}, best last-generation score {min(scores):.6g} "
            f"({dt.date.today().isoformat()}; history in {work.relative_to(results_dir)})")
    if extra:
        first = names[0]
        note += f"; {first} halved from {tuned[first]:.6g} for the long run (§6.2 step 6)"
        tuned[first] /= 2
    path = out_dir / f"table_{table}_{scale}.yaml"
    write_tuned(path, table, scale, optimizer, tuned, note)
    print(f"tuned {optimizer}: {_fmt(tuned)}\nwrote {path}\nuse it: +tuned={path.stem}", flush=True)
    return tuned


def _fmt(values: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.4g}" for k, v in values.items()) + "}"


def run_generation(base: list[str], gen_dir: Path, children: list[str], jobs: int) -> int:
    """One Hydra multirun over a generation's children (joblib launcher); its log goes to gen_dir."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    launcher = ["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    command = [sys.executable, "-m", "runners.run", "-m", *base, f"hydra.searchpath=[file://{gen_dir}]",
               f"+tune_child={','.join(children)}", *launcher, f"threads={threads}", "progress=false",
               f"hydra.sweep.dir={gen_dir / 'hydra'}"]
    with open(gen_dir / "multirun.log", "w") as log:
        return subprocess.call(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=int, help="the table whose task is tuned on (its experiment config)")
    parser.add_argument("optimizer")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. scale=smoke (default: quick)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("OPTBENCH_JOBS", "2")))
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling and the children's seeds")
    parser.add_argument("--out", type=Path, default=CONFIGS / "tuned", help="where the tuned config goes")
    args = parser.parse_args(argv)
    try:
        tune(args.table, args.optimizer, args.overrides, args.jobs, args.out, args.seed)
    except ConfigError as error:
        print(f"optbench: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
