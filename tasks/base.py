"""The task contract (DESIGN.md, "Task"): parameters, batches, a training loss, metrics, and what a
task offers to optimizers that need more than gradients.

A task owns its random state (a ``torch.Generator`` seeded from the run's task seed), so the same
seed gives the same batches whatever the optimizer does with the global RNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


class Task:
    """A benchmark problem. Subclasses set ``name`` and implement ``sample_batch`` and ``loss``.

    ``offers`` lists capabilities beyond gradients, matched against ``OptimizerSpec.requires`` by
    ``runners.plan.unmet_requirements`` (the only applicability check: a pair it rejects is left out of
    table sweeps with its message as the reason):

    - ``"hessian"``: ``flat_loss`` is defined and the parameter vector is small enough for an exact
      dense Hessian (``torch.func``) and its solve (Newton, LM);
    - ``"dense_curvature"``: small enough to store and update an n x n matrix (BFGS);
    - ``"mlp"``: the thesis's one-hidden-layer MLP structure (``task.mlp``; OWO, MOLF, AMOLF, LM-AMOLF);
    - ``"hidden_matrices"``: weight matrices other than the first layer and the head
      (``optimizers.routing``), which the orthogonalized-update family acts on.
    """

    name: ClassVar[str]
    offers: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, data_dir: Path | None = None) -> None:
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def sample_batch(self) -> Any:
        """Draw the next training batch (data, noise, ...). Called once per optimizer step."""
        return None

    def loss(self, batch: Any) -> torch.Tensor:
        """Training loss of ``batch`` at the current parameters (differentiable)."""
        raise NotImplementedError

    def flat_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        """The same loss as a function of the flattened parameter vector (for ``torch.func``)."""
        raise NotImplementedError(f"task {self.name!r} does not offer a functional loss")

    def evaluate(self) -> dict[str, float]:
        """Metrics at the current parameters, outside the training clock."""
        return {}

    def facts(self) -> dict[str, float]:
        """Constants of this task instance worth recording (e.g. an analytic optimum)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"params": [p.detach().clone() for p in self.parameters()], "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, saved in zip(self.parameters(), state["params"], strict=True):
                p.copy_(saved)
        self.generator.set_state(state["rng"])


class VectorTask(Task):
    """A task whose parameters are one flat vector ``x``; its loss is ``flat_loss(x, batch)``."""

    offers = frozenset({"hessian", "dense_curvature"})

    def __init__(self, x0: torch.Tensor, seed: int, device: torch.device, dtype: torch.dtype, **context) -> None:
        super().__init__(seed, device, dtype, **context)
        self.x = x0.to(device=device, dtype=dtype).clone().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.x]

    def loss(self, batch: Any) -> torch.Tensor:
        return self.flat_loss(self.x, batch)


class ModelTask(Task):
    """A task whose parameters are those of an ``nn.Module``: the subclass builds the model and
    calls ``self.attach(model)``, which moves it to the task's device and dtype.

    ``loss(batch)`` is ``self.criterion(self.model(inputs), targets)`` plus ``self.l2 / 2 * ||w||^2``
    when ``l2`` is set; ``flat_loss`` evaluates the same through ``torch.func.functional_call``.
    """

    l2: float = 0.0

    def attach(self, model: nn.Module) -> None:
        self.model = model.to(device=self.device, dtype=self.dtype)
        self._names = [n for n, p in self.model.named_parameters() if p.requires_grad]

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def criterion(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _regularised(self, loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        if not self.l2:
            return loss
        return loss + 0.5 * self.l2 * sum(p.square().sum() for p in params)

    def loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        return self._regularised(self.criterion(self.model(inputs), targets), self.parameters())

    def flat_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        params = list(x.split([p.numel() for p in self.parameters()]))
        params = [v.view_as(p) for v, p in zip(params, self.parameters(), strict=True)]
        output = torch.func.functional_call(self.model, dict(zip(self._names, params, strict=True)), (inputs,))
        return self._regularised(self.criterion(output, targets), params)

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["rng"])
