"""The LODO tasks: Rosenbrock's values and the noisy bowl's construction (papers/lodo.md §3.1-3.2)."""

from __future__ import annotations

import math

import pytest
import torch

import tasks

CPU = torch.device("cpu")


def test_rosenbrock_start_and_minimum():
    task = tasks.get("rosenbrock")(seed=0, device=CPU, dtype=torch.float64)
    assert task.loss(None).item() == pytest.approx(3.085, abs=1e-12)
    assert task.flat_loss(torch.ones(2, dtype=torch.float64)).item() == 0.0


def test_noisy_quadratic_spectrum_and_optimum():
    task = tasks.get("noisy_quadratic")(seed=7, device=CPU, dtype=torch.float64)
    h = task.hessian
    torch.testing.assert_close(h, h.T)
    eig = torch.linalg.eigvalsh(h)
    expected = torch.exp(torch.linspace(math.log(1e-3), 0.0, 100, dtype=torch.float64))
    torch.testing.assert_close(eig, expected, rtol=1e-9, atol=1e-12)
    assert task.facts()["optimum"] == pytest.approx(7.4118, abs=1e-4), "sigma^2 tr(H)/2 for sigma = 1"


def test_noisy_quadratic_is_reproducible_and_seed_dependent():
    def centres(seed):
        task = tasks.get("noisy_quadratic")(seed=seed, device=CPU, dtype=torch.float64)
        return task.hessian, torch.stack([task.sample_batch() for _ in range(5)])

    h1, c1 = centres(3)
    h2, c2 = centres(3)
    h3, _ = centres(4)
    assert torch.equal(h1, h2) and torch.equal(c1, c2), "same seed must give the same bowl and walk"
    assert not torch.equal(h1, h3), "a different seed must give a different U"


def test_noisy_quadratic_walk_has_the_stated_variance():
    task = tasks.get("noisy_quadratic")(seed=1, device=CPU, dtype=torch.float64, noise_std=0.5)
    walk = torch.stack([task.sample_batch() for _ in range(2001)])
    steps = walk.diff(dim=0)
    assert steps.var().item() == pytest.approx(0.25, rel=0.02)


def test_noisy_quadratic_oracle_attains_the_optimum():
    """x_t = c_{t-1} (the best prediction) averages sigma^2 tr(H)/2 (papers/lodo.md §7.1)."""
    task = tasks.get("noisy_quadratic")(seed=2, device=CPU, dtype=torch.float64)
    losses = []
    previous = task.sample_batch()
    for _ in range(20000):
        batch = task.sample_batch()
        losses.append(task.flat_loss(previous, batch).item())
        previous = batch
    assert sum(losses) / len(losses) == pytest.approx(task.facts()["optimum"], rel=0.02)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'nope'; valid: .*noisy_quadratic.*rosenbrock"):
        tasks.get("nope")
