"""Draw MNIST digits pixel by pixel from a finished ``mnist_generation`` run and save a PNG grid.

    python -m scripts.sample_digits results/runs/<hash> [--count 16] [--out digits.png]

The run must have saved its final parameters (budget ``save_params: true`` writes ``params.pt`` into
the record). The task is rebuilt from the record's ``config.json`` and the parameters loaded into it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_task(record_dir: Path, data_dir: str | Path | None = None):
    """The record's task with its saved final parameters (CPU)."""
    import tasks
    from runners.plan import DTYPES

    config = json.loads((record_dir / "config.json").read_text())
    task_cfg = config["task"]
    task = tasks.get(task_cfg["name"])(seed=config["task_seed"], device=torch.device("cpu"),
                                       dtype=DTYPES[task_cfg["dtype"]], data_dir=data_dir, **task_cfg["options"])
    task.load_state_dict(torch.load(record_dir / "params.pt", weights_only=True))
    return task


def save_grid(images: torch.Tensor, path: Path, title: str = "") -> Path:
    """uint8 images [N, 28, 28] as one PNG grid (white digits on black, as MNIST)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    cols = min(count, 8)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=255)
    if title:
        fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sample_record(record_dir: Path, out: Path, count: int = 16, pixels: int = 784, seed: int = 0,
                  data_dir: str | Path | None = None) -> Path:
    task = load_task(Path(record_dir), data_dir)
    images = task.sample(count, torch.Generator().manual_seed(seed), pixels=pixels)
    return save_grid(images, out, f"{count} digits sampled from run {Path(record_dir).name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", type=Path, help="a run's record directory (results/runs/<hash>)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if not (args.record / "params.pt").exists():
        print(f"sample_digits: {args.record}/params.pt is missing (run with budget save_params: true)",
              file=sys.stderr)
        return 2
    path = sample_record(args.record, args.out or args.record / "digits.png", args.count, seed=args.seed,
                         data_dir=args.data_dir)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
