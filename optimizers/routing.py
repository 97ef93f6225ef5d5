"""Which parameter goes to the matrix optimizer and which to AdamW (papers/orthogonal.md §1, §9).

The orthogonalized optimizers only make sense for hidden weight matrices: Keller Jordan's rule is
"hidden weights with ndim >= 2 (conv filters flattened) to Muon; embeddings, the classifier head and
all gains and biases to AdamW; for a ConvNet, every conv filter except the first". The registry builder
only receives the task's parameter list, so the role of each tensor comes from, in order:

1. a tag set by the task: ``tag(param, HIDDEN)`` or ``tag(param, OTHER)`` (a task that knows better,
   e.g. a transformer's embedding matrix, tags its parameters after building the model); else
2. the default rule on the list's order (``nn.Module.parameters()`` order): a tensor with ndim >= 2 is
   a hidden matrix unless it is the first or the last such tensor (the input layer / stem, and the
   head); everything else (biases, norms, 0-D/1-D tensors) is "other".

``param_groups(params, matrix, adamw)`` turns the roles into two param groups carrying each side's
hyperparameters; an optimizer built from them (``optimizers.orthogonal``) applies the matrix rule to
the first group and torch's AdamW to the second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

HIDDEN = "hidden_matrix"
OTHER = "other"
ROLE_ATTR = "_optbench_role"


def tag(param: torch.Tensor, role: str) -> torch.Tensor:
    """Mark ``param`` as a hidden matrix or as "other", overriding the default rule."""
    if role not in (HIDDEN, OTHER):
        raise ValueError(f"unknown parameter role {role!r}; valid: {HIDDEN}, {OTHER}")
    if role == HIDDEN and param.ndim < 2:
        raise ValueError(f"a {param.ndim}-D tensor cannot be a hidden matrix (shape {tuple(param.shape)})")
    setattr(param, ROLE_ATTR, role)
    return param


def tag_module(model: nn.Module, roles: Mapping[str, str]) -> None:
    """``tag`` by parameter name: ``tag_module(model, {"embed.weight": OTHER})``."""
    named = dict(model.named_parameters())
    unknown = sorted(set(roles) - set(named))
    if unknown:
        raise ValueError(f"no parameter named {', '.join(unknown)}; have: {', '.join(named)}")
    for name, role in roles.items():
        tag(named[name], role)


def roles(params: Sequence[torch.Tensor]) -> list[str]:
    """The role of each parameter: its tag, else the default rule (ndim >= 2 and neither the first
    nor the last such tensor)."""
    matrices = [i for i, p in enumerate(params) if p.ndim >= 2]
    ends = {matrices[0], matrices[-1]} if matrices else set()
    out = []
    for i, p in enumerate(params):
        explicit = getattr(p, ROLE_ATTR, None)
        out.append(explicit or (HIDDEN if p.ndim >= 2 and i not in ends else OTHER))
    return out


def param_groups(params: Sequence[torch.Tensor], matrix: Mapping[str, Any], adamw: Mapping[str, Any]
                 ) -> list[dict[str, Any]]:
    """Two param groups: hidden matrices with ``matrix`` hyperparameters (``matrix=True``) and the rest
    with ``adamw`` hyperparameters (``matrix=False``). Empty groups are left out."""
    params = list(params)
    kinds = roles(params)
    hidden = [p for p, k in zip(params, kinds, strict=True) if k == HIDDEN]
    other = [p for p, k in zip(params, kinds, strict=True) if k == OTHER]
    groups = []
    if hidden:
        groups.append({"params": hidden, "matrix": True, **matrix})
    if other:
        groups.append({"params": other, "matrix": False, **adamw})
    return groups


ADAMW_KEYS = ("adamw_lr", "adamw_beta1", "adamw_beta2", "adamw_eps", "adamw_weight_decay")


def adamw_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Pop the ``adamw_*`` registry hyperparameters into the AdamW group's settings."""
    return {"lr": hparams.pop("adamw_lr"), "betas": (hparams.pop("adamw_beta1"), hparams.pop("adamw_beta2")),
            "eps": hparams.pop("adamw_eps"), "weight_decay": hparams.pop("adamw_weight_decay")}
