"""The AMOLF regression tasks (tasks.regression, tasks.amolf_data): data files, the generated
matrix-inversion set, folds, preprocessing, initialisation, and training through the runner."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import ROOT

import optimizers
import tasks
from runners.loop import train
from tasks.amolf_data import IPNNL, fold_indices, mattrn, read_patterns
from tasks.data import DataError

F64 = torch.float64
CPU = torch.device("cpu")


def make(name: str, seed: int = 0, **options):
    return tasks.get(name)(seed=seed, device=CPU, dtype=F64, **options)


@pytest.mark.parametrize("name", sorted(IPNNL))
def test_ipnnl_files_parse_to_the_documented_shapes(name):
    spec = IPNNL[name]
    task = make(name)
    n, m, nh, nv = task.mlp.sizes
    assert (n, m, nv) == (spec.n_inputs, spec.n_outputs, spec.n_patterns), (n, m, nv)
    assert nh == task.hidden_units


def test_patterns_span_lines_and_are_read_as_one_stream(tmp_path):
    path = tmp_path / "two.tra"
    path.write_text("1 2 3\n4 5\r\n6 7 8 9\n10\n")  # N=3, M=2: two patterns over four lines, CRLF
    x, t = read_patterns(path, 3, 2)
    assert x.tolist() == [[1, 2, 3], [6, 7, 8]] and t.tolist() == [[4, 5], [9, 10]], (x, t)


def test_wrong_sized_file_names_file_n_m_and_what_was_found(tmp_path):
    path = tmp_path / "Twod.tra"
    path.write_text(" ".join(["0.5"] * 31))
    with pytest.raises(DataError) as error:
        read_patterns(path, 8, 7)
    text = str(error.value)
    assert "Twod.tra" in text and "N=8" in text and "M=7" in text and "31 numbers" in text, text
    path.write_text(" ".join(["0.5"] * 30))
    with pytest.raises(DataError, match="found 2 patterns.*1768 patterns"):
        read_patterns(path, 8, 7, 1768)


def test_corrupt_or_missing_file_raises_data_error(tmp_path):
    path = tmp_path / "bad.tra"
    path.write_text("1 2 3 x4 5 6")
    with pytest.raises(DataError, match=r"bad.tra: number 4 is not a number \('x4'\).*N=2.*M=1"):
        read_patterns(path, 2, 1)
    with pytest.raises(DataError, match="cannot read"):
        tasks.get("twod")(seed=0, device=CPU, dtype=F64, data_dir=tmp_path)


def test_mattrn_is_the_inverse_of_kept_matrices():
    x, t = mattrn(seed=0)
    assert x.shape == (2000, 4) and t.shape == (2000, 4)
    det = x[:, 0] * x[:, 3] - x[:, 1] * x[:, 2]
    assert bool(((det >= 0.3) & (det <= 2.0)).all()), f"determinants outside [0.3, 2]: {det.min()}, {det.max()}"
    product = x.view(-1, 2, 2) @ t.view(-1, 2, 2)
    assert torch.allclose(product, torch.eye(2, dtype=F64).expand_as(product), atol=1e-12), "t is not A^-1"
    assert torch.equal(mattrn(seed=0)[0], x) and not torch.equal(mattrn(seed=1)[0], x), "seeding"


def test_folds_partition_the_patterns():
    seen = []
    for fold in range(10):
        train_idx, val, test = fold_indices(1768, 10, fold, seed=0)
        parts = torch.cat([train_idx, val, test])
        assert parts.unique().numel() == 1768, f"fold {fold}: parts overlap or miss patterns"
        assert abs(val.numel() - 176.8) < 1 and abs(test.numel() - 176.8) < 1
        seen.append(test)
    assert torch.cat(seen).unique().numel() == 1768, "every pattern is tested exactly once over the folds"


def test_preprocessing_and_initialisation_follow_the_code():
    task = make("twod", seed=3, protocol="folds", fold=2)
    x, t = task.splits["train"]
    assert torch.equal(x[:, 0], torch.ones_like(x[:, 0])), "the constant-1 column comes first (code)"
    assert x[:, 1:].mean(0).abs().max() < 1e-12, "inputs are centred with the training mean"
    assert task.splits["test"][0][:, 1:].mean(0).abs().max() > 1e-6, "test inputs use the training mean"
    net = x @ task.W.detach().T
    assert torch.allclose(net.mean(0), torch.full((27,), 0.5, dtype=F64), atol=1e-12), "net control: mean 0.5"
    assert torch.allclose(net.std(0, correction=0), torch.ones(27, dtype=F64), atol=1e-12), "net control: std 1"
    loss = task.loss(None)
    loss.backward()
    assert task.Wo.grad.abs().max() < 1e-10, "the initial output weights are the OWO solution"
    metrics = task.evaluate()
    assert set(metrics) == {"train_mse", "val_mse", "test_mse"}, metrics
    assert math.isclose(metrics["train_mse"], loss.item(), rel_tol=1e-12)
    last = make("twod", seed=3, bias="last")
    assert torch.equal(last.mlp.x[:, -1], torch.ones(1768, dtype=F64)), "bias: last puts it at N+1"


def test_twod_initial_owo_error_is_near_0_24():
    """Fig. 6.1: every algorithm starts at ~0.240 after the initial OWO (N_h = 27)."""
    errors = [make("twod", seed=s).evaluate()["train_mse"] for s in range(3)]
    assert all(0.22 < e < 0.26 for e in errors), f"initial OWO MSE {errors}, expected ~0.24"


def test_hessian_and_minibatches_for_generic_optimizers():
    task = make("concrete", seed=1, batch_size=64)
    batch = task.sample_batch()
    assert batch.shape == (64,)
    v = torch.cat([p.detach().reshape(-1) for p in task.parameters()])
    assert torch.allclose(task.flat_loss(v, batch), task.loss(batch)), "flat_loss != loss"


@pytest.mark.parametrize("name", ["adam", "amolf", "scg"])
def test_optimizers_train_the_model_through_the_runner(name):
    task = make("mattrn", seed=0, hidden=8)
    spec = optimizers.get(name)
    hparams = yaml.safe_load((ROOT / "configs" / "optimizer" / f"{name}.yaml").read_text())["hparams"]
    opt = optimizers.build(name, task.parameters(), {**hparams, **({"lr": 0.01} if name == "adam" else {})})
    analytic = spec.multiplies_per_step(task) if spec.multiplies_per_step else None
    result = train(task, opt, {"steps": 15, "eval_every": 5}, multiplies_per_step=analytic)
    curve = result.curve
    assert curve["loss"].iloc[-1] < curve["loss"].iloc[0], f"{name} did not reduce the loss"
    assert list(result.evals["step"]) == [0, 5, 10, 15]
    if name == "amolf":
        assert "opt_n_groups" in curve and "opt_epm" in curve, curve.columns
        per_step = curve.groupby("step")["multiplies"].first().diff().dropna()
        from optimizers import amolf_counts

        expected = [amolf_counts.per_iteration("amolf", 4, 4, 8, 2000, groups=int(g))
                    for g in curve.groupby("step")["opt_n_groups"].first().iloc[1:]]
        assert torch.allclose(torch.tensor(per_step.values, dtype=F64), torch.tensor(expected, dtype=F64),
                              atol=1.0), "the curve's multiplies are the per-step counts of the N_g used"


def test_multiplies_cap_stops_the_run():
    task = make("mattrn", seed=0, hidden=8)
    opt = optimizers.build("owo_molf", task.parameters(), {})
    per_step = optimizers.get("owo_molf").multiplies_per_step(task)
    result = train(task, opt, {"steps": 100, "multiplies": 3.5 * per_step})
    assert result.stats["steps"] == 4, f"cap of 3.5 steps' multiplies ran {result.stats['steps']} steps"
