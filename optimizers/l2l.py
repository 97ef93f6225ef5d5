"""The L2L baseline: Andrychowicz et al.'s coordinate-wise LSTM optimizer, meta-trained on noisy bowls.

"Learning to learn by gradient descent by gradient descent" (Andrychowicz et al. 2016, §2-3 and
Appendix A), in the form LODO's authors ran it as a baseline (papers/lodo.md §4.4, the PyTorch script
``L2LBGDBGD/.../quadratic_bowl.py``): a two-layer LSTM (hidden 20) shared by every coordinate reads
the preprocessed gradient of its coordinate and outputs the update, x <- x + out_mul * m(g) with
out_mul = 0.1. It is meta-trained with Adam (lr 0.03) on the summed loss of 20-step unrolls of
100-step episodes of the noisy quadratic bowl, each episode on a fresh bowl (a new eigenbasis and a
new random walk), for 50 epochs of 20 episodes; after every epoch the network is scored on 20 test
episodes and the best epoch's weights are kept. The meta-gradient ignores second derivatives (the
gradient fed to the LSTM is detached), as in the paper's §3.2 and the code.

Where we follow the code rather than the paper: the preprocessing adds 1e-8 inside the logarithm;
the test episodes are drawn from fixed seeds (the code draws fresh ones per epoch), so the best-epoch
comparison is made on the same bowls. The LSTM runs in float32 whatever the parameters' dtype.

Meta-training is an artefact cached at ``<cache>/l2l/<hash>.pt``, the hash taken over the
meta-training configuration; ``<cache>`` is ``$OPTBENCH_CACHE_DIR`` (the runner sets it to
``<results_dir>/cache``), else ``$OPTBENCH_RESULTS_DIR/cache``, else ``results/cache``. The first
run that needs it trains it (under a file lock, so parallel jobs train it once) and every later run
loads it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from optimizers.common import evaluate, groups_with_grads
from optimizers.registry import COUNT, NON_NEGATIVE, POSITIVE, OptimizerSpec, Range, register

log = logging.getLogger("optbench")
ROOT = Path(__file__).resolve().parent.parent
FORMAT = 1  # bump when the meta-training procedure changes, so old cache entries are not reused


def preprocess(grad: Tensor, factor: float) -> Tensor:
    """Andrychowicz et al. Appendix A: g -> (log(|g|) / p, sign(g)) if |g| >= e^-p, else (-1, e^p g).
    ``grad`` is (n,); returns (n, 2). The LODO code adds 1e-8 inside the logarithm; so do we."""
    keep = grad.abs() >= math.exp(-factor)
    first = torch.where(keep, torch.log(grad.abs() + 1e-8) / factor, torch.full_like(grad, -1.0))
    second = torch.where(keep, torch.sign(grad), grad * math.exp(factor))
    return torch.stack([first, second], dim=-1)


class L2LNet(nn.Module):
    """The coordinate-wise two-layer LSTM: (n,) gradients and a (4, n, hidden) state [h1, c1, h2, c2]
    in, (n,) updates and the new state out. Every coordinate is one row of the batch."""

    def __init__(self, hidden_size: int = 20, preproc_factor: float = 10.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.preproc_factor = preproc_factor
        self.cell1 = nn.LSTMCell(2, hidden_size)
        self.cell2 = nn.LSTMCell(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, 1)

    def initial_state(self, n: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(4, n, self.hidden_size, device=device)

    def forward(self, grad: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        inp = preprocess(grad.detach().float(), self.preproc_factor)
        h1, c1 = self.cell1(inp, (state[0], state[1]))
        h2, c2 = self.cell2(h1, (state[2], state[3]))
        return self.output(h2).squeeze(-1), torch.stack([h1, c1, h2, c2])


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Everything that determines the meta-trained network (papers/lodo.md §4.4 defaults)."""

    hidden_size: int = 20
    preproc_factor: float = 10.0
    out_mul: float = 0.1
    meta_lr: float = 0.03
    unroll: int = 20
    episode_steps: int = 100
    epochs: int = 50
    episodes_per_epoch: int = 20
    test_episodes: int = 20
    meta_dim: int = 100
    meta_noise_std: float = 1.0
    meta_seed: int = 0

    def key(self) -> str:
        payload = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


def run_episode(net: L2LNet, config: MetaConfig, seed: int, meta_opt: torch.optim.Optimizer | None = None,
                steps: int | None = None) -> list[float]:
    """One episode on a fresh noisy bowl drawn from ``seed``; returns the loss of every step. With
    ``meta_opt`` the network is trained by truncated backpropagation every ``config.unroll`` steps
    (the summed loss of the unroll, as in the code); without it the network only runs."""
    from tasks.noisy_quadratic import NoisyQuadratic  # lazy: tasks imports optimizers.registry

    task = NoisyQuadratic(seed, torch.device("cpu"), torch.float64, dim=config.meta_dim,
                          noise_std=config.meta_noise_std)
    train = meta_opt is not None
    theta = torch.zeros(config.meta_dim, dtype=torch.float64, requires_grad=True)
    state = net.initial_state(config.meta_dim)
    losses: list[float] = []
    total: Tensor | float = 0.0
    for it in range(1, (steps or config.episode_steps) + 1):
        loss = task.flat_loss(theta, task.sample_batch())
        (grad,) = torch.autograd.grad(loss, theta, retain_graph=train)
        with torch.set_grad_enabled(train):
            update, state = net(grad, state)
            theta = theta + config.out_mul * update.to(theta.dtype)
        losses.append(loss.item())
        if not train:
            theta = theta.detach().requires_grad_(True)
            continue
        total = total + loss
        if it % config.unroll == 0:
            meta_opt.zero_grad(set_to_none=True)
            total.backward()
            meta_opt.step()
            total = 0.0
            theta = theta.detach().requires_grad_(True)
            state = state.detach()
    return losses


def held_out_loss(net: L2LNet, config: MetaConfig) -> float:
    """Mean per-step loss over the fixed test episodes (the code sums over steps; same ordering)."""
    episodes = [run_episode(net, config, _seed(config.meta_seed, "test", i)) for i in range(config.test_episodes)]
    return sum(sum(e) / len(e) for e in episodes) / len(episodes)


def meta_train(config: MetaConfig) -> dict[str, Any]:
    """Meta-train a network; returns {"state_dict", "history"} with the best epoch's weights."""
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(config.meta_seed)
        net = L2LNet(config.hidden_size, config.preproc_factor)
    meta_opt = torch.optim.Adam(net.parameters(), lr=config.meta_lr)
    history: dict[str, Any] = {"initial_test": held_out_loss(net, config), "train": [], "test": []}
    best, best_state = math.inf, copy.deepcopy(net.state_dict())
    for epoch in range(config.epochs):
        train = [run_episode(net, config, _seed(config.meta_seed, "train", epoch, i), meta_opt)
                 for i in range(config.episodes_per_epoch)]
        history["train"].append(sum(sum(e) / len(e) for e in train) / len(train))
        score = held_out_loss(net, config)
        history["test"].append(score)
        log.info("l2l meta-training epoch %d/%d: train %.4g, test %.4g", epoch + 1, config.epochs,
                 history["train"][-1], score)
        if score < best:  # NaN never wins
            best, best_state = score, copy.deepcopy(net.state_dict())
            history["best_epoch"] = epoch + 1
    history.update(best_test=best, seconds=time.perf_counter() - start)
    return {"format": FORMAT, "config": dataclasses.asdict(config), "state_dict": best_state, "history": history}


def cache_dir() -> Path:
    """Where meta-trained networks live (see the module docstring)."""
    if os.environ.get("OPTBENCH_CACHE_DIR"):
        return Path(os.environ["OPTBENCH_CACHE_DIR"]) / "l2l"
    return Path(os.environ.get("OPTBENCH_RESULTS_DIR") or ROOT / "results") / "cache" / "l2l"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_train(config: MetaConfig, directory: Path | None = None) -> dict[str, Any]:
    """The cached artefact for ``config``, meta-training and saving it (atomically) when missing."""
    path = (directory or cache_dir()) / f"{config.key()}.pt"
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            return torch.load(path, weights_only=True)
        log.info("meta-training the L2L optimizer (%s) into %s", config, path)
        artefact = meta_train(config)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(artefact, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return artefact


def trained_net(config: MetaConfig, directory: Path | None = None) -> L2LNet:
    net = L2LNet(config.hidden_size, config.preproc_factor)
    net.load_state_dict(load_or_train(config, directory)["state_dict"])
    net.eval().requires_grad_(False)
    return net


class L2LOptimizer(torch.optim.Optimizer):
    """Applies a trained :class:`L2LNet` coordinate-wise: x <- x + out_mul * m(g) (Andrychowicz et al.
    2016, Eq. 1 with the update sign of the code: the network's output is added). All parameters of a
    group are concatenated into one (n_coords,) batch, so one LSTM call serves every coordinate. The
    LSTM state of each parameter lives in ``self.state[p]["lstm"]`` and round-trips via state_dict()."""

    def __init__(self, params, net: L2LNet, out_mul: float = 0.1) -> None:
        if not out_mul > 0.0:
            raise ValueError(f"Invalid out_mul: {out_mul} (must be > 0)")
        super().__init__(params, dict(out_mul=out_mul))
        self.net = net.to(self.param_groups[0]["params"][0].device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate(closure)
        for group, params in groups_with_grads(self):
            for p in params:
                if "lstm" not in self.state[p]:
                    self.state[p]["lstm"] = self.net.initial_state(p.numel(), p.device)
            grads = torch.cat([p.grad.reshape(-1).float() for p in params])
            # float(): Optimizer.load_state_dict casts floating state to the parameter's dtype
            state = torch.cat([self.state[p]["lstm"] for p in params], dim=1).float()
            update, state = self.net(grads, state)
            numels = [p.numel() for p in params]
            for p, s in zip(params, state.split(numels, dim=1), strict=True):
                self.state[p]["lstm"] = s
            updates = [u.view_as(p).to(p.dtype) for u, p in zip(update.split(numels), params, strict=True)]
            torch._foreach_add_(params, updates, alpha=group["out_mul"])
        return loss


def build(params, **hparams) -> L2LOptimizer:
    config = MetaConfig(**hparams)
    return L2LOptimizer(params, trained_net(config), out_mul=config.out_mul)


register(
    OptimizerSpec(
        "l2l",
        build,
        {"hidden_size": COUNT, "preproc_factor": POSITIVE, "out_mul": POSITIVE, "meta_lr": POSITIVE,
         "unroll": COUNT, "episode_steps": COUNT, "epochs": COUNT, "episodes_per_epoch": COUNT,
         "test_episodes": COUNT, "meta_dim": COUNT, "meta_noise_std": NON_NEGATIVE,
         "meta_seed": Range(0, kind=int)},
        doc=L2LOptimizer.__doc__,
    )
)
