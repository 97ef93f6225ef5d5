"""The Nlar classification tasks (papers/nlar_soaa.md §A.3): architectures, Keras initialisation and
L2, the per-seed re-split, the epoch iteration, metrics, CIFAR-10 through torchvision's on-disk
format (tiny data set), and the message when CIFAR-10 is missing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tasks
from tasks.data import DataError

CPU = torch.device("cpu")


def make(name, data_dir=None, seed=1, **options):
    return tasks.get(name)(seed=seed, device=CPU, dtype=torch.float32, data_dir=data_dir, **options)


@pytest.fixture(scope="module")
def mlp2h():
    return make("mnist_mlp2h", eval_size=500)


def test_mlp2h_architecture_glorot_init_and_kernel_only_l2(mlp2h):
    shapes = [tuple(p.shape) for p in mlp2h.parameters()]
    assert shapes == [(1000, 784), (1000,), (1000, 1000), (1000,), (10, 1000), (10,)], shapes
    assert sum(p.numel() for p in mlp2h.parameters()) == 1_796_010
    for p in mlp2h.parameters():
        if p.dim() == 1:
            assert (p == 0).all(), "Keras biases start at zero"
        else:
            bound = math.sqrt(6.0 / sum(p.shape))
            assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound, "Glorot-uniform kernel bounds"
    batch = mlp2h.sample_batch()
    plain = nn.functional.cross_entropy(mlp2h.model(batch[0]), batch[1])
    kernels = sum(p.square().sum() for p in mlp2h.parameters() if p.dim() > 1)
    assert mlp2h.loss(batch).item() == pytest.approx((plain + 1e-4 * kernels).item(), rel=1e-6), \
        "loss = cross-entropy + 1e-4 * sum of squared kernels (biases excluded)"


def test_resplit_is_a_per_seed_partition_of_train_and_test(mlp2h):
    x_train, y_train = mlp2h.train_set
    x_val, _ = mlp2h.val_set
    assert (len(y_train), len(mlp2h.val_set[1])) == (60_000, 10_000)
    other = make("mnist_logreg", seed=2, eval_size=10)
    assert not torch.equal(other.val_set[0][:50], x_val[:50]), "another seed must re-split differently"
    same = tasks.get("mnist_logreg")(seed=1, device=CPU, dtype=torch.float32, eval_size=10)
    assert torch.equal(same.val_set[0], x_val), "the split depends on the seed only (shared by all optimizers)"
    canonical = make("mnist_logreg", split="canonical")
    from tasks.data import mnist

    assert torch.equal(canonical.val_set[1], mnist(None, "test")[1]), "split=canonical keeps the official test set"
    everything = torch.cat([x_train, x_val]).reshape(70_000, -1).float().sum(1)
    original = torch.cat([canonical.train_set[0], canonical.val_set[0]]).reshape(70_000, -1).float().sum(1)
    assert torch.equal(everything.sort().values, original.sort().values), "re-split loses or repeats images"


def test_an_epoch_visits_every_training_image_once_in_batches_of_300():
    task = make("mnist_logreg", eval_size=10)
    assert task.steps_per_epoch == 200
    labels = []
    for _ in range(200):
        x, y = task.sample_batch()
        assert x.shape == (300, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        labels.append(y)
    assert torch.cat(labels).bincount().tolist() == task.train_set[1].bincount().tolist(), "one pass per epoch"
    first_epoch = task._order.clone()
    task.sample_batch()
    assert not torch.equal(task._order, first_epoch), "the training set is reshuffled every epoch"


def test_evaluate_reports_held_out_and_training_metrics(mlp2h):
    metrics = mlp2h.evaluate()
    assert set(metrics) == {"val_accuracy", "val_loss", "train_accuracy", "train_loss", "epoch_accuracy"}
    assert 0.0 <= metrics["val_accuracy"] <= 0.3, f"an untrained net is near chance, got {metrics}"
    assert metrics["val_loss"] == pytest.approx(math.log(10), rel=0.3)
    mlp2h.loss(mlp2h.sample_batch())
    assert 0.0 <= mlp2h.evaluate()["epoch_accuracy"] <= 1.0


def test_cifar10_tasks_on_a_tiny_dataset_in_the_real_format(tiny_cifar10):
    mlp = make("cifar10_mlp7h", data_dir=tiny_cifar10)
    assert (len(mlp.train_set[1]), len(mlp.val_set[1])) == (100, 20), "re-split keeps the canonical sizes"
    assert [p.shape[0] for p in mlp.parameters() if p.dim() == 2] == [512] * 7 + [10]
    x, y = mlp.sample_batch()
    assert x.shape == (100, 3, 32, 32) and mlp.loss((x, y)).isfinite()
    vgg = make("cifar10_vgg11", data_dir=tiny_cifar10)
    layers = [type(m).__name__ for m in vgg.model if not isinstance(m, nn.Sequential)]
    assert layers[:8] == ["Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d", "Conv2d", "ReLU", "MaxPool2d", "BatchNorm2d"], \
        f"BN comes after pooling: {layers[:8]}"
    bn = [m for m in vgg.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn) == 5 and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bn), "Keras BN defaults"
    head = [m.out_features for m in vgg.model[-1] if isinstance(m, nn.Linear)]
    assert head == [4096, 4096, 10], head
    loss = vgg.loss(vgg.sample_batch())
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None for p in vgg.parameters())
    assert set(vgg.evaluate()) >= {"val_accuracy", "train_accuracy"}


def test_missing_cifar10_stops_with_a_message_saying_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        make("cifar10_mlp7h", data_dir=tmp_path)

