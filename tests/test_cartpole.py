"""The CartPole Double-DQN task (papers/nlar_soaa.md §A.3): replay warm-up, one update per runner
step, Double-DQN targets, reward shaping, epsilon schedule, evaluation, determinism and resume."""

from __future__ import annotations

import copy

import pytest
import torch

import optimizers
import tasks

CPU = torch.device("cpu")


def make(seed=5):
    return tasks.get("cartpole")(seed=seed, device=CPU, dtype=torch.float64)


def test_first_batch_plays_the_warm_up_and_targets_are_double_dqn():
    task = make()
    states, (actions, y) = task.sample_batch()
    assert task.replay.size > 1000 and task.updates == 1 and task.epsilon == 1.0, "no update before 1000 transitions"
    assert states.shape == (64, 4) and actions.shape == y.shape == (64,)
    with torch.no_grad():  # y recomputed from the batch's rows in the buffer
        stored_states, stored_actions = task.replay.states[: task.replay.size], task.replay.actions[: task.replay.size]
        rows = [int(((stored_states == s).all(1) & (stored_actions == a)).nonzero()[0])
                for s, a in zip(states, actions, strict=True)]
        r, s2, done = task.replay.rewards[rows], task.replay.next_states[rows], task.replay.terminated[rows]
        best = task.model(s2).argmax(1)
        expected = r + 0.95 * task.target(s2)[torch.arange(64), best] * (1 - done)
    torch.testing.assert_close(y, expected, msg="y = r + gamma Q_target(s', argmax_a Q(s', a)) (1 - terminated)")
    loss = task.loss((states, (actions, y)))
    q = task.model(states).gather(1, actions[:, None]).squeeze(1)
    assert loss.item() == pytest.approx(((q - y) ** 2).mean().item()), "MSE on the taken actions"


def test_reward_shaping_epsilon_schedule_and_one_update_per_step():
    task = make()
    task.sample_batch()
    terminal = task.replay.terminated[: task.replay.size] == 1
    assert terminal.any() and (task.replay.rewards[: task.replay.size][terminal] == -1).all(), \
        "a terminal step before step 200 is rewarded -1"
    assert (task.replay.rewards[: task.replay.size][~terminal] == 1).all()
    for _ in range(9):
        task.sample_batch()
    assert task.updates == 10 and task.epsilon == pytest.approx(0.995**9), "epsilon decays once per update"


def test_runner_trains_the_q_network_with_any_optimizer_and_evaluates():
    task = make()
    opt = optimizers.build("nlarcm", task.parameters(), {"lr": 0.01})
    before = [p.detach().clone() for p in task.parameters()]
    first = task.evaluate()
    for _ in range(30):
        batch = task.sample_batch()
        opt.zero_grad()
        task.loss(batch).backward()
        opt.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, task.parameters(), strict=True)]
    assert any(moved), "the optimizer must move the Q-network"
    second = task.evaluate()
    assert set(second) >= {"return_running_mean", "eval_return", "epsilon"}
    assert 8 <= first["eval_return"] <= 200 and second["return_running_mean"] == pytest.approx(
        (first["eval_return"] + second["eval_return"]) / 2), "running mean of the evaluation returns"


def test_evaluation_does_not_perturb_training_and_same_seed_repeats():
    a, b = make(), make()
    for i in range(5):
        if i % 2:
            a.evaluate()
        assert torch.equal(a.sample_batch()[1][1], b.sample_batch()[1][1]), "evaluation changed the training stream"
    assert not torch.equal(make(6).sample_batch()[0], make(5).sample_batch()[0]), "seeds must differ"


def test_state_dict_resumes_the_environment_and_replay_exactly():
    task = make()
    for _ in range(3):
        task.sample_batch()
    saved = copy.deepcopy(task.state_dict())
    ahead = [task.sample_batch()[1][1] for _ in range(250)]  # crosses episode ends
    task.load_state_dict(saved)
    again = [task.sample_batch()[1][1] for _ in range(250)]
    assert all(torch.equal(x, y) for x, y in zip(ahead, again, strict=True)), "resumed batches differ"
