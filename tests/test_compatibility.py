"""Every registered optimizer either runs on every registered task or is excluded with a stated reason.

The reason comes from the suite's one applicability rule, ``runners.plan.unmet_requirements`` (an
optimizer's ``requires`` against the task's ``offers``), which ``make_plan`` enforces and table 14
uses to leave pairs out. Each applicable pair runs two steps through the runner's loop (the first
under the multiply counter) from the optimizer's config defaults, on the task's smoke options cut
to their smallest (``TINY``: narrow networks through the tasks' ``width`` options). CIFAR-10 tasks
read a tiny data set in the real on-disk format (``conftest.write_tiny_cifar10``); any other task whose
data set is missing here is skipped, naming the file. Each pair starts from a copy of the same freshly
built task.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_cifar10
from omegaconf import OmegaConf

import optimizers
import tasks
from runners.loop import train
from runners.plan import DTYPES, NotApplicable, make_plan, unmet_requirements
from tasks.data import DataError, resolve_data_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# The smallest settings of each task, over its config's smoke options: tiny batches, models and
# evaluation subsets, a canonical split (no re-split copy of the data set per run).
TINY: dict[str, dict] = {
    "mnist_logreg": {"batch_size": 4, "eval_size": 4, "split": "canonical"},
    "mnist_mlp2h": {"batch_size": 4, "eval_size": 4, "split": "canonical", "width": 0.01},
    "cifar10_mlp7h": {"batch_size": 4, "eval_size": 4, "split": "canonical", "width": 1 / 64},
    "cifar10_vgg11": {"batch_size": 2, "eval_size": 2, "split": "canonical", "width": 1 / 32},
    "cifar10_resnet18": {"width": 1 / 32, "batch_size": 4, "test_size": 4, "augmentation": False},
    "mnist_generation": {"batch_size": 2, "val_positions": 1, "test_pairs": 4, "width": 4},
    "cartpole": {"hidden": 8, "buffer_size": 16, "train_start": 4, "batch_size": 4, "eval_episodes": 1},
    "noisy_quadratic": {"dim": 10},
    **{name: {"hidden": 3} for name in ("twod", "single2", "oh7", "concrete", "housing")},
    "mattrn": {"hidden": 3, "n_patterns": 100},
}


# Pairs known to reach a non-finite loss within two steps at their config defaults: they run (the runner
# records them as diverged), but the defaults do not suit the task. Strict: an entry that stops
# diverging fails the test, so the list stays true.
# On the float32 tasks, online L-BFGS's first step s = -lr * eps * g (1e-13 g at the defaults) is lost
# to rounding, so s^T y = 0 and the two-loop recursion divides by zero on the next step.
KNOWN_DIVERGENT: dict[tuple[str, str], str] = {
    (optimizer, task): "float32: the first step (lr 1e-3 x eps 1e-10) is below rounding, then s^T y = 0"
    for optimizer in ("lbfgs", "olbfgs") for task in ("mnist_generation", "cifar10_resnet18")
}


def composed(group: str, name: str, **root) -> dict:
    """``configs/<group>/<name>.yaml`` resolved at scale=smoke, as Hydra would compose it (these
    group files have no defaults lists; their interpolations read ``scale``, ``task`` and themselves)."""
    node = OmegaConf.load(CONFIGS / group / f"{name}.yaml")
    tree = OmegaConf.create({"scale": {"name": "smoke"}, **root, group: node})
    return OmegaConf.to_container(tree, resolve=True)[group]


def test_every_task_and_optimizer_has_a_config():
    for group, names in (("task", tasks.names()), ("optimizer", optimizers.names())):
        missing = [n for n in names if not (CONFIGS / group / f"{n}.yaml").exists()]
        assert not missing, f"registered {group}s without configs/{group}/<name>.yaml: {missing}"


def test_exclusions_are_the_plans_own_error(make_cfg):
    """The reason a pair is excluded is exactly what ``make_plan`` refuses it with."""
    reason = unmet_requirements(optimizers.get("amolf"), tasks.get("mnist_logreg"))
    assert reason and "needs mlp" in reason, reason
    with pytest.raises(NotApplicable) as error:
        make_plan(make_cfg("task=mnist_logreg", "optimizer=amolf", "scale=smoke"))
    assert str(error.value) == reason


@pytest.mark.parametrize("task_name", tasks.names())
def test_every_optimizer_runs_or_is_excluded_with_a_reason(task_name, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OPTBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))  # L2L's network
    task_cls = tasks.get(task_name)
    task_cfg = composed("task", task_name)
    options = {**(task_cfg.get("options") or {}), **TINY.get(task_name, {})}
    dtype = DTYPES[task_cfg.get("dtype", "float32")]

    data_dir = resolve_data_dir(None)
    if task_name.startswith("cifar10_"):
        data_dir = write_tiny_cifar10(tmp_path_factory.mktemp("data"))
    torch.manual_seed(0)
    try:
        pristine = task_cls(seed=0, device=torch.device("cpu"), dtype=dtype, data_dir=data_dir, **options)
    except DataError as error:
        pytest.skip(f"{task_name}: data missing ({error})")

    failures, ran, excluded, seconds = [], [], {}, {}
    for name in optimizers.names():
        spec = optimizers.get(name)
        reason = unmet_requirements(spec, task_cls)
        if reason is not None:
            assert isinstance(reason, str) and reason.strip(), f"{name} on {task_name}: empty exclusion reason"
            assert all(need in reason for need in spec.requires - task_cls.offers), reason
            excluded[name] = reason
            continue
        start = time.perf_counter()
        try:
            hparams = composed("optimizer", name, task=task_cfg).get("hparams") or {}
            task = copy.deepcopy(pristine)
            torch.manual_seed(1)
            optimizer = spec.build(task.parameters(), **spec.validate(hparams))
            analytic = spec.multiplies_per_step(task) if spec.multiplies_per_step else None
            result = train(task, optimizer, {"steps": 2, "warmup_steps": 1}, multiplies_per_step=analytic)
        except Exception as error:  # every failure of the task is reported at once
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        seconds[name] = time.perf_counter() - start
        losses = list(result.curve["loss"])
        finite = result.status == "ok" and result.stats["steps"] == 2 and all(math.isfinite(x) for x in losses)
        known = KNOWN_DIVERGENT.get((name, task_name))
        if finite == bool(known):
            failures.append(f"{name}: status {result.status}, {result.stats['steps']} steps, losses {losses}"
                            + (f" (listed in KNOWN_DIVERGENT: {known}; it no longer diverges)" if known else ""))
        else:
            ran.append(name)
    assert not failures, f"optimizers that do not run on {task_name}:\n" + "\n".join(failures)
    assert sorted(ran) + sorted(excluded) and set(ran) | set(excluded) == set(optimizers.names())
    slowest = sorted(seconds.items(), key=lambda kv: -kv[1])[:3]
    print(f"{task_name}: {len(ran)} run, {len(excluded)} excluded; slowest {slowest}")
