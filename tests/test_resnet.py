"""The ResNet-18 CIFAR-10 task (papers/lodo.md §3.4) on the tiny CIFAR-10 fixture."""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
import torchvision

import tasks
from optimizers import routing
from runners.plan import make_plan
from runners.records import Record
from runners.run import execute
from tasks.resnet import augment, cifar_resnet18

CPU = torch.device("cpu")


def make_task(data_dir, **options):
    options = {"width": 0.125, "batch_size": 32, **options}
    return tasks.get("cifar10_resnet18")(seed=0, device=CPU, dtype=torch.float32, data_dir=data_dir, **options)


def test_parameter_count_and_layout_match_torchvision_resnet18():
    model = cifar_resnet18(1.0)
    count = sum(p.numel() for p in model.parameters())
    assert count == 11_173_962, f"expected 11,173,962 parameters (LODO's ResNet-18), got {count:,}"
    reference = torchvision.models.resnet18(num_classes=10)
    assert list(model.state_dict()) == list(reference.state_dict()), "layout must be torchvision's resnet18"
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    hidden = [r == routing.HIDDEN for r in routing.roles(list(model.parameters()))]
    names = [n for n, _ in model.named_parameters()]
    assert sum(hidden) == 19 and not hidden[names.index("conv1.weight")] and not hidden[names.index("fc.weight")], \
        "every conv filter but the stem goes to the matrix optimizer; the head and BN/biases to AdamW"


def test_forward_backward_loss_and_metrics_on_tiny_cifar(tiny_cifar10):
    task = make_task(tiny_cifar10)
    inputs, targets = task.sample_batch()
    assert inputs.shape == (32, 3, 32, 32) and inputs.is_contiguous(memory_format=torch.channels_last)
    loss = task.loss((inputs, targets))
    ce = F.cross_entropy(task.model(inputs), targets)
    l2 = 0.5e-4 * sum(p.square().sum() for p in task.parameters())
    assert torch.isclose(loss, ce + l2), f"loss must be CE + 1e-4/2 ||w||^2: {loss} vs {ce + l2}"
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in task.parameters())
    metrics = task.evaluate()
    assert set(metrics) == {"test_loss", "test_accuracy"} and 0.0 <= metrics["test_accuracy"] <= 1.0, metrics


def test_epochs_shuffle_every_image_once_and_frozen_batchnorm_is_affine(tiny_cifar10):
    task = make_task(tiny_cifar10, augmentation=False)
    sizes = [len(task.sample_batch()[1]) for _ in range(5)]
    assert sizes == [32, 32, 32, 4, 32], f"100 images in batches of 32 with a remainder per epoch, got {sizes}"
    assert torch.equal(task._order.sort().values, torch.arange(100)), "an epoch is a permutation of the set"
    bn = task.model.bn1
    before = bn.running_mean.clone(), bn.running_var.clone()
    task.loss(task.sample_batch()).backward()
    assert not task.model.training, "frozen BatchNorm: the model runs in inference mode"
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1), "BN is a per-channel affine layer"
    trained = make_task(tiny_cifar10, batchnorm="train")
    trained.loss(trained.sample_batch())
    assert trained.model.training and not torch.all(trained.model.bn1.running_mean == 0)


def test_augmentation_is_a_padded_crop_and_a_flip():
    images = torch.randn(6, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(3))
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(6):
        crops = [padded[i, :, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        found = any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
        assert found, f"image {i} is not a (flipped) 32x32 crop of the 4-padded input"


def test_one_smoke_run_records_training_loss_and_test_accuracy(make_cfg, tiny_cifar10):
    cfg = make_cfg("task=cifar10_resnet18", "optimizer=muon", "scale=smoke", f"data_dir={tiny_cifar10}")
    plan = make_plan(cfg)
    summary = execute(plan, cfg)
    assert summary["status"] == "ok", summary.get("error")
    evals = pd.read_csv(Record(cfg.results_dir, plan.hash).dir / "evals.csv")
    assert {"test_loss", "test_accuracy"} <= set(evals.columns) and len(evals) >= 3, evals
