"""The L2L baseline (Andrychowicz et al. 2016 as in papers/lodo.md §4.4): preprocessing by hand, the
coordinate-wise batched step, meta-training, the cached artefact and the optimizer's state."""

from __future__ import annotations

import copy
import math

import torch

from optimizers import l2l
from optimizers.l2l import L2LNet, L2LOptimizer, MetaConfig, preprocess
from runners.plan import make_plan
from runners.run import execute

TINY = MetaConfig(epochs=2, episodes_per_epoch=2, episode_steps=30, unroll=10, test_episodes=2, meta_dim=20)


def test_preprocessing_by_hand():
    p = 10.0
    g = torch.tensor([2.0, -3e-3, -1e-6, 0.0, 5e-5], dtype=torch.float64)
    expected = torch.tensor([
        [math.log(2.0 + 1e-8) / p, 1.0],        # |g| >= e^-10: (log|g| / p, sign g)
        [math.log(3e-3 + 1e-8) / p, -1.0],
        [-1.0, math.exp(p) * -1e-6],            # |g| < e^-10 = 4.54e-5: (-1, e^p g)
        [-1.0, 0.0],
        [math.log(5e-5 + 1e-8) / p, 1.0],       # just above the threshold
    ], dtype=torch.float64)
    got = preprocess(g, p)
    assert got.shape == (5, 2), f"expected (5, 2), got {tuple(got.shape)}"
    assert torch.allclose(got, expected, rtol=1e-12, atol=0), f"expected\n{expected}\ngot\n{got}"


def test_step_is_coordinatewise_and_batched():
    torch.manual_seed(0)
    net = L2LNet().requires_grad_(False)
    a = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = L2LOptimizer([a, b], net, out_mul=0.1)
    grads = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64) * 1e-6]
    for step in range(2):
        a.grad, b.grad = (g * (step + 1) for g in grads)
        opt.step()
    assert opt.state[a]["lstm"].shape == (4, 12, 20) and opt.state[b]["lstm"].shape == (4, 5, 20), \
        "each parameter keeps a (4, numel, hidden) LSTM state"
    # the same two steps, one coordinate at a time through the network
    flat = torch.cat([g.reshape(-1) for g in grads])
    expected = torch.zeros(17, dtype=torch.float64)
    for i in range(17):
        state = net.initial_state(1)
        for step in range(2):
            update, state = net(flat[i:i + 1] * (step + 1), state)
            expected[i] += 0.1 * update.double().item()
    got = torch.cat([a.detach().reshape(-1), b.detach()])
    assert torch.allclose(got, expected, atol=1e-6), f"batched step differs from per-coordinate: {got - expected}"


def test_meta_training_reduces_the_meta_loss():
    artefact = l2l.meta_train(TINY)
    history = artefact["history"]
    assert len(history["test"]) == TINY.epochs and history["best_epoch"] in (1, 2)
    assert history["best_test"] < 0.5 * history["initial_test"], (
        f"meta-training should at least halve the held-out loss of the untrained LSTM: "
        f"initial {history['initial_test']:.4g}, best {history['best_test']:.4g}")
    net = L2LNet()
    net.load_state_dict(artefact["state_dict"])
    again = l2l.held_out_loss(net, TINY)
    assert math.isclose(again, history["best_test"], rel_tol=1e-5), \
        f"the kept weights should score the best epoch's loss {history['best_test']}, got {again}"


def test_cache_is_reused_by_later_runs(make_cfg, results, monkeypatch):
    calls = []
    real = l2l.meta_train

    def counting(config):
        calls.append(config)
        return real(config)

    monkeypatch.setattr(l2l, "meta_train", counting)
    overrides = ["task=noisy_quadratic", "optimizer=l2l", "scale=smoke", "task.budget.smoke.steps=30",
                 "optimizer.meta_budget.smoke={epochs: 1, episodes_per_epoch: 1, episode_steps: 10, unroll: 5, "
                 "test_episodes: 1}"]
    first = execute(make_plan(cfg := make_cfg(*overrides, "seed=0")), cfg)
    second = execute(make_plan(cfg := make_cfg(*overrides, "seed=1")), cfg)
    assert first["status"] == second["status"] == "ok", (first, second)
    assert len(calls) == 1, f"meta-training should run once and be cached, ran {len(calls)} times"
    cached = list((results / "cache" / "l2l").glob("*.pt"))
    assert [p.stem for p in cached] == [calls[0].key()], f"expected one artefact named by the hash, got {cached}"
    mtime = cached[0].stat().st_mtime_ns
    l2l.trained_net(calls[0], results / "cache" / "l2l")
    assert len(calls) == 1 and cached[0].stat().st_mtime_ns == mtime, "a cached artefact must not be rewritten"


def test_meta_budget_follows_the_scale(make_cfg):
    smoke = make_plan(make_cfg("task=noisy_quadratic", "optimizer=l2l", "scale=smoke")).optimizer["hparams"]
    paper = make_plan(make_cfg("task=noisy_quadratic", "optimizer=l2l", "scale=paper")).optimizer["hparams"]
    assert (smoke["epochs"], smoke["episodes_per_epoch"]) == (2, 2), smoke
    assert (paper["epochs"], paper["episodes_per_epoch"], paper["episode_steps"], paper["unroll"],
            paper["test_episodes"], paper["meta_lr"]) == (50, 20, 100, 20, 20, 0.03), paper


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(1)
    net = L2LNet().requires_grad_(False)
    grads = [torch.randn(6, dtype=torch.float64) for _ in range(5)]

    def run(opt, x, steps):
        for g in steps:
            x.grad = g.clone()
            opt.step()

    x = torch.ones(6, dtype=torch.float64, requires_grad=True)
    opt = L2LOptimizer([x], net)
    run(opt, x, grads[:3])
    saved, x_saved = copy.deepcopy(opt.state_dict()), x.detach().clone()
    run(opt, x, grads[3:])

    y = x_saved.clone().requires_grad_(True)
    resumed = L2LOptimizer([y], net)
    resumed.load_state_dict(saved)
    run(resumed, y, grads[3:])
    assert torch.equal(x, y), f"resumed run differs: {x - y}"
    fresh = x_saved.clone().requires_grad_(True)
    run(L2LOptimizer([fresh], net), fresh, grads[3:])
    assert not torch.equal(fresh, y), "the LSTM state must matter (a fresh state should give other steps)"


def test_invalid_out_mul_is_rejected():
    try:
        L2LOptimizer([torch.zeros(2, requires_grad=True)], L2LNet(), out_mul=0.0)
    except ValueError as error:
        assert "out_mul" in str(error)
    else:
        raise AssertionError("out_mul=0 should raise ValueError")
