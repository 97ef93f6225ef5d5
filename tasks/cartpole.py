"""The Nlar paper's reinforcement-learning task: Double DQN on gymnasium ``CartPole-v0`` (episodes
capped at 200 steps), as the official code runs it (``experiments/src_epxeriments/training.py``,
``ddqn_agent.py``; papers/nlar_soaa.md §A.3). Any registered optimizer trains the Q-network.

Agent: Q-network 4 -> Dense 128 ReLU -> Dense 2 (Glorot, zero biases), a target copy, a replay
buffer of 10,000 transitions, discount 0.95, epsilon-greedy exploration with epsilon = 1 decayed by
0.995 after every replay update down to 0.01. An environment step stores (s, a, r, s', terminated)
with the code's reward shaping (-1 on a terminal step that is not the 200th); an update (batch 64,
sampled without replacement) follows every non-terminal step once the buffer holds more than
1,000 transitions. Double-DQN target y = r + 0.95 Q_target(s', argmax_a Q(s', a)) (1 - terminated);
the loss is mean((Q(s, a) - y)^2) (Keras ``mean_squared_error``; the declared L2 is not applied in
the code's GradientTape loss, so none here). The target is synced when an episode terminates, and
after every step of episodes whose index is a multiple of 40. Episode e resets with seed
``task_seed + e + 1``.

One runner step = one replay update. ``sample_batch()`` advances the environment until the next
update is due and returns its batch (states, (actions, targets)); the first call therefore plays
the 1,000+ warm-up transitions, which land in the runner's warm-up steps. So the loss is always a
real replay loss, steps count updates (epsilon reaches 0.01 after 919), and ``y`` is formed at the
parameters the closure differentiates, as in the code.

Evaluation (``evaluate``, on the runner's ``eval_every`` cadence instead of after every episode):
``eval_episodes`` episodes on a separate environment with the agent's epsilon-greedy policy at the
current epsilon (the code's ``act``, not greedy) and unshaped rewards, from RNGs of its own so the
training stream does not depend on the cadence. ``return_running_mean`` is the cumulative mean of
the evaluation returns so far (the paper's plotted curve), ``eval_return`` this evaluation's mean.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from tasks.base import ModelTask
from tasks.registry import register


class Replay:
    """A ring buffer of transitions in preallocated tensors."""

    def __init__(self, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.capacity, self.size, self.next = capacity, 0, 0
        self.states = torch.zeros(capacity, 4, dtype=dtype, device=device)
        self.next_states = torch.zeros_like(self.states)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.rewards = torch.zeros(capacity, dtype=dtype, device=device)
        self.terminated = torch.zeros(capacity, dtype=dtype, device=device)

    def add(self, state, action: int, reward: float, next_state, terminated: bool) -> None:
        i = self.next
        self.states[i] = torch.as_tensor(state)
        self.next_states[i] = torch.as_tensor(next_state)
        self.actions[i], self.rewards[i], self.terminated[i] = action, reward, float(terminated)
        self.next, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = torch.randperm(self.size, generator=generator, device=generator.device)[:n]
        return (self.states[index], self.actions[index], self.rewards[index], self.next_states[index],
                self.terminated[index])


@register
class CartPole(ModelTask):
    name = "cartpole"

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, data_dir=None, *,
                 env_id: str = "CartPole-v0", hidden: int = 128, gamma: float = 0.95, buffer_size: int = 10_000,
                 train_start: int = 1000, batch_size: int = 64, epsilon: float = 1.0, epsilon_min: float = 0.01,
                 epsilon_decay: float = 0.995, target_sync_every: int = 40, eval_episodes: int = 10) -> None:
        super().__init__(seed, device, dtype, data_dir=data_dir)
        if not (buffer_size >= batch_size >= 1 and train_start >= batch_size and eval_episodes >= 1):
            raise ValueError(f"need buffer_size >= batch_size >= 1, train_start >= batch_size, eval_episodes >= 1; "
                             f"got {buffer_size}, {batch_size}, {train_start}, {eval_episodes}")
        self.env, self.eval_env = gym.make(env_id), gym.make(env_id)
        self.max_steps = self.env.spec.max_episode_steps
        model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        for layer in (model[0], model[2]):
            nn.init.xavier_uniform_(layer.weight, generator=self.generator)
            nn.init.zeros_(layer.bias)
        self.attach(model)
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.gamma, self.batch_size, self.train_start = gamma, batch_size, train_start
        self.epsilon, self.epsilon_min, self.epsilon_decay = epsilon, epsilon_min, epsilon_decay
        self.target_sync_every, self.eval_episodes = target_sync_every, eval_episodes
        self.replay = Replay(buffer_size, dtype, device)
        self.eval_generator = torch.Generator(device=device).manual_seed(seed + 1_000_003)
        self.episode, self.episode_step, self.env_steps, self.updates = 0, 0, 0, 0
        self._sync_episode = 0
        self.state = self._reset()
        self.episode_return = 0.0
        self.last_episode_return = float("nan")
        self.eval_returns: list[float] = []

    # --- acting -------------------------------------------------------------------------------
    def _reset(self):
        state, _ = self.env.reset(seed=self.seed + self.episode + 1)
        return state

    @torch.no_grad()
    def act(self, state, generator: torch.Generator) -> int:
        """The code's ``act``: a random action with probability epsilon, else argmax Q."""
        if float(torch.rand((), generator=generator, device=generator.device)) <= self.epsilon:
            return int(torch.randint(0, 2, (), generator=generator, device=generator.device))
        q = self.model(torch.as_tensor(state, dtype=self.dtype, device=self.device).unsqueeze(0))
        return int(q.argmax(1))

    def sync_target(self) -> None:
        self.target.load_state_dict(self.model.state_dict())

    def _env_step(self) -> bool:
        """One environment step; True when an update follows it (the code's loop body)."""
        action = self.act(self.state, self.generator)
        next_state, reward, terminated, _, _ = self.env.step(action)
        last = self.episode_step == self.max_steps - 1
        shaped = reward if not terminated or last else -1.0
        self.replay.add(self.state, action, shaped, next_state, terminated)
        self.env_steps += 1
        self.episode_return += shaped
        self.state = next_state
        update = not terminated and self.replay.size > self.train_start
        if terminated:
            self.sync_target()
        if terminated or last:  # episode over: the code's `break` or the end of its 200-step loop
            self.last_episode_return = self.episode_return
            self.episode += 1
            self.episode_step, self.episode_return = 0, 0.0
            self.state = self._reset()
        else:
            self.episode_step += 1
        return update

    def sample_batch(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Play until the next update is due; return its batch with the Double-DQN targets."""
        if self.updates:  # bookkeeping after the previous update, in the code's order
            if self.epsilon > self.epsilon_min:
                self.epsilon *= self.epsilon_decay
            if self._sync_episode % self.target_sync_every == 0:
                self.sync_target()
        while True:
            episode = self.episode
            if self._env_step():
                break
            if episode % self.target_sync_every == 0:
                self.sync_target()
        self._sync_episode = episode
        self.updates += 1
        states, actions, rewards, next_states, terminated = self.replay.sample(self.batch_size, self.generator)
        with torch.no_grad():
            best = self.model(next_states).argmax(1, keepdim=True)
            targets = rewards + self.gamma * self.target(next_states).gather(1, best).squeeze(1) * (1 - terminated)
        return states, (actions, targets)

    def criterion(self, output: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        actions, y = targets
        return (output.gather(1, actions.unsqueeze(1)).squeeze(1) - y).square().mean()

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        returns = []
        for i in range(self.eval_episodes):
            episode_seed = self.seed + 10_000_019 + len(self.eval_returns) * self.eval_episodes + i
            state, _ = self.eval_env.reset(seed=episode_seed)
            total, done = 0.0, False
            while not done:
                state, reward, terminated, truncated, _ = self.eval_env.step(self.act(state, self.eval_generator))
                total += reward
                done = terminated or truncated
            returns.append(total)
        self.eval_returns.append(sum(returns) / len(returns))
        return {"return_running_mean": sum(self.eval_returns) / len(self.eval_returns),
                "eval_return": self.eval_returns[-1], "epsilon": self.epsilon, "episodes": self.episode,
                "env_steps": self.env_steps, "train_return": self.last_episode_return}

    # --- checkpoints: everything that moves, so a resumed run continues identically --------------
    COUNTERS = ("episode", "episode_step", "env_steps", "updates", "_sync_episode", "epsilon", "episode_return",
                "last_episode_return", "eval_returns", "state")

    def state_dict(self) -> dict[str, Any]:
        env = self.env.unwrapped
        return {**super().state_dict(), "target": copy.deepcopy(self.target.state_dict()),
                "eval_rng": self.eval_generator.get_state(), "replay": copy.deepcopy(vars(self.replay)),
                "counters": copy.deepcopy({k: getattr(self, k) for k in self.COUNTERS}),
                "env": {"state": copy.deepcopy(env.state), "rng": copy.deepcopy(env.np_random.bit_generator.state),
                        "beyond": env.steps_beyond_terminated, "elapsed": self.env.get_wrapper_attr("_elapsed_steps")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.target.load_state_dict(state["target"])
        self.eval_generator.set_state(state["eval_rng"])
        vars(self.replay).update(copy.deepcopy(state["replay"]))
        for key, value in copy.deepcopy(state["counters"]).items():
            setattr(self, key, value)
        env = self.env.unwrapped
        env.state, env.steps_beyond_terminated = copy.deepcopy(state["env"]["state"]), state["env"]["beyond"]
        env.np_random.bit_generator.state = state["env"]["rng"]
        self.env.set_wrapper_attr("_elapsed_steps", state["env"]["elapsed"])
