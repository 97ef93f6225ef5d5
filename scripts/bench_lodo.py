"""LODO's speed figures for ``make bench`` (issue 3): on the 94,696-parameter MNIST CNN (float32, batch
256), one LODO step (float32 preconditioner; its closure includes the network's forward and backward)
against the network's own forward + backward; target ratio <= 1.5. Also the step rate of every table-5
optimizer (one step = batch, forward, backward, update). Medians over interleaved repeats, so a burst of
background load hits every side.

    python -m scripts.bench_lodo [--batch 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import optimizers
import tasks

CPU = torch.device("cpu")


def _task(batch: int):
    return tasks.get("mnist_generation")(seed=0, device=CPU, dtype=torch.float32, batch_size=batch)


def _table5_hparams() -> dict[str, dict]:
    """Each table-5 optimizer's hyperparameters: its config's defaults, then the table's values."""
    from hydra import compose, initialize_config_dir

    from scripts.reproduce import CONFIGS, compose_table

    cfg = compose_table(5, ["scale=smoke"])
    out = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for name in cfg.report.sweep.optimizer:
            defaults = dict(compose("config", overrides=[f"optimizer={name}"]).optimizer.hparams)
            out[name] = {**defaults, **dict(cfg.hparams.get(name) or {})}
    return out


def bench(batch: int = 256, repeats: int = 3) -> tuple[dict, list[str]]:
    task = _task(batch)
    params = task.parameters()
    hparams = _table5_hparams()
    opts = {name: optimizers.build(name, params, h) for name, h in hparams.items()}
    for opt in opts.values():
        if hasattr(opt, "set_budget"):
            opt.set_budget(10**9)
    batch_data = task.sample_batch()

    def closure_for(opt):
        def closure():
            opt.zero_grad(set_to_none=True)
            loss = task.loss(batch_data)
            loss.backward()
            return loss
        return closure

    def fwd_bwd() -> float:
        start = time.perf_counter()
        for p in params:
            p.grad = None
        task.loss(batch_data).backward()
        return time.perf_counter() - start

    def step(opt) -> float:
        start = time.perf_counter()
        opt.step(closure_for(opt))
        return time.perf_counter() - start

    fwd_bwd()
    for opt in opts.values():  # warm-up (LODO's first step has m = 0, the rest do the full work)
        step(opt)
        step(opt)
    times: dict[str, list[float]] = {"forward_backward": [], **{name: [] for name in opts}}
    for _ in range(repeats):
        times["forward_backward"].append(fwd_bwd())
        for name, opt in opts.items():
            times[name].append(step(opt))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["lodo"] / medians["forward_backward"]
    figures = {
        "batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
        "forward_backward_s": medians["forward_backward"],
        "lodo_step_s": medians["lodo"], "lodo_ratio": ratio, "target": "lodo_ratio <= 1.5",
        "steps_per_second": {name: 1.0 / medians[name] for name in opts},
    }
    lines = [
        f"## LODO on the MNIST CNN (94,696 parameters, float32, batch {batch}, {torch.get_num_threads()} threads)",
        "",
        f"- forward + backward: {medians['forward_backward']:.3f} s; one LODO step: {medians['lodo']:.3f} s; "
        f"ratio {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})",
        "",
        "| optimizer | s/step | steps/s |",
        "|---|---|---|",
        *[f"| {name} | {medians[name]:.3f} | {1.0 / medians[name]:.3f} |" for name in opts],
    ]
    return figures, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    figures, lines = bench(args.batch, args.repeats)
    print("\n".join(lines))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
