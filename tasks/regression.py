"""The AMOLF thesis's regression tasks (papers/amolf.md §1, §3, §4): a one-hidden-layer sigmoid MLP
with bypass weights on Twod, Single2, Oh7, Concrete, Housing (IPNNL files) and Mattrn (generated).

Parameters are the MLP's two weight tensors, W (N_h x (N+1)) and Wo (M x (N+1+N_h)), so any
registered optimizer can train the model through the runner (full batch by default; ``batch_size``
draws minibatches). The loss is the thesis's MSE (summed over outputs, averaged over patterns).
The task ``offers`` ``"mlp"`` (``task.mlp``: the training patterns and the weights, for OWO, MOLF,
AMOLF and LM) and ``"hessian"`` (``flat_loss``).

Preprocessing and initialisation follow the code: inputs mean-centred with the training mean
(targets raw), the constant-1 column first (``bias: first``; ``last`` is the thesis text's order),
W ~ N(0, 1) from the task seed rescaled by net control (each hidden net function mean 0.5, std 1),
then Wo from one OWO solve (``init: owo``; ``net_control`` leaves Wo = 0). The MATLAB generator
``mlp_randn`` is not reproduced: the 10 initial networks are 10 task seeds.

Protocols: ``protocol: whole`` trains on the whole file (the thesis's figures); ``protocol: folds``
is the table's 10-fold protocol: ``fold`` picks the test part, the next part is the validation set,
the other 8 train; ``evaluate()`` then returns ``val_mse`` and ``test_mse`` beside ``train_mse``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from optimizers.owo import MLPProblem, mse, net_control_, owo_, sigmoid
from tasks.amolf_data import IPNNL, fold_indices, ipnnl, mattrn
from tasks.base import Task
from tasks.registry import register

PROTOCOLS = ("whole", "folds")


class MLPRegression(Task):
    """One regression data set and the thesis's MLP on it; subclasses name the data."""

    offers = frozenset({"mlp", "hessian", "dense_curvature"})
    hidden_units: ClassVar[int]

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, data_dir: Path | None = None,
                 hidden: int | None = None, protocol: str = "whole", fold: int = 0, folds: int = 10,
                 split_seed: int = 0, bias: str = "first", init: str = "owo", batch_size: int = 0,
                 **data_options: Any) -> None:
        super().__init__(seed, device, dtype, data_dir)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if bias not in ("first", "last") or init not in ("owo", "net_control"):
            raise ValueError(f"bias must be first|last and init owo|net_control, got {bias!r}, {init!r}")
        x, t = (v.to(device=device, dtype=dtype) for v in self.load(**data_options))
        if protocol == "folds":
            parts = dict(zip(("train", "val", "test"), fold_indices(x.shape[0], folds, fold, split_seed),
                             strict=True))
        else:
            parts = {"train": torch.arange(x.shape[0])}
        x = x - x[parts["train"].to(device)].mean(0)
        ones = torch.ones(x.shape[0], 1, device=device, dtype=dtype)
        x = torch.cat([ones, x] if bias == "first" else [x, ones], 1)
        self.splits = {name: (x[i.to(device)], t[i.to(device)]) for name, i in parts.items()}
        self.batch_size = int(batch_size)

        n1, m = x.shape[1], t.shape[1]
        nh = int(hidden or self.hidden_units)
        bias_col = 0 if bias == "first" else n1 - 1
        x_train, t_train = self.splits["train"]
        W = torch.randn(nh, n1, generator=self.generator, device=device, dtype=dtype)
        net_control_(x_train, W, bias_col)
        self.W = W.requires_grad_(True)
        self.Wo = torch.zeros(m, n1 + nh, device=device, dtype=dtype, requires_grad=True)
        self.mlp = MLPProblem(x=x_train, t=t_train, W=self.W, Wo=self.Wo, bias_col=bias_col)
        if init == "owo":
            owo_(self.mlp)

    def load(self, **options: Any) -> tuple[Tensor, Tensor]:
        if options:
            raise TypeError(f"task {self.name!r} has no option {', '.join(options)}")
        return ipnnl(self.name, self.data_dir)

    def parameters(self) -> list[Tensor]:
        return [self.W, self.Wo]

    def forward(self, x: Tensor, W: Tensor, Wo: Tensor) -> Tensor:
        n1 = x.shape[1]
        return torch.addmm(x @ Wo[:, :n1].T, sigmoid(x @ W.T), Wo[:, n1:].T)

    def sample_batch(self) -> Tensor | None:
        """None (the whole training set) unless ``batch_size`` asks for a minibatch of indices."""
        n = self.mlp.x.shape[0]
        if not self.batch_size or self.batch_size >= n:
            return None
        return torch.randperm(n, generator=self.generator, device=self.device)[: self.batch_size]

    def _batch(self, batch: Tensor | None) -> tuple[Tensor, Tensor]:
        x, t = self.splits["train"]
        return (x, t) if batch is None else (x[batch], t[batch])

    def loss(self, batch: Tensor | None) -> Tensor:
        x, t = self._batch(batch)
        return mse(t, self.forward(x, self.W, self.Wo))

    def flat_loss(self, v: Tensor, batch: Tensor | None) -> Tensor:
        x, t = self._batch(batch)
        W, Wo = v.split([self.W.numel(), self.Wo.numel()])
        return mse(t, self.forward(x, W.view_as(self.W), Wo.view_as(self.Wo)))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {f"{name}_mse": float(mse(t, self.forward(x, self.W, self.Wo)))
                for name, (x, t) in self.splits.items()}

    def facts(self) -> dict[str, float]:
        n, m, nh, nv = self.mlp.sizes
        return {"n_inputs": n, "n_outputs": m, "hidden": nh, "n_train": nv}


@register
class Twod(MLPRegression):
    name = "twod"
    hidden_units = 27  # thesis Fig. 6.1


@register
class Single2(MLPRegression):
    name = "single2"
    hidden_units = 23  # thesis Fig. 6.3


@register
class Oh7(MLPRegression):
    name = "oh7"
    hidden_units = 23  # thesis Fig. 6.5


@register
class Concrete(MLPRegression):
    name = "concrete"
    hidden_units = 23  # thesis Fig. 6.9


@register
class Housing(MLPRegression):
    """N_h is not stated for Housing; 23 (as for the other small sets) is our choice: with 280
    training patterns and 359 weights LM can nearly interpolate, which is what Table 6.2's LM row
    (training 0.95, testing 134) suggests."""

    name = "housing"
    hidden_units = 23


@register
class Mattrn(MLPRegression):
    """The matrix-inversion set, generated (``tasks.amolf_data.mattrn``) from ``data_seed``."""

    name = "mattrn"
    hidden_units = 30  # thesis Fig. 6.7

    def load(self, data_seed: int = 0, n_patterns: int = 2000) -> tuple[Tensor, Tensor]:
        return mattrn(n_patterns=n_patterns, seed=data_seed)


__all__ = ["IPNNL", "MLPRegression"]
