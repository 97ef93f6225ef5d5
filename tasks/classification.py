"""The Nlar paper's image classifiers (papers/nlar_soaa.md §A.3): MNIST logistic regression and
MLP2h (784-1000-1000-10), CIFAR-10 MLP7h (3072-7x512-10) and its VGG11 variant, as the official
Keras code builds and trains them.

Keras semantics kept: Glorot-uniform kernels and zero biases; an L2 kernel regulariser that adds
``l2 * sum(W^2)`` over Dense/Conv kernels only (not biases or BatchNorm) to the loss; BatchNorm with
momentum 0.99 / eps 1e-3 (PyTorch momentum 0.01); pixels divided by 255, no normalisation or
augmentation; batches of 300 from a training set reshuffled every epoch, the last batch of an
epoch being the remainder (CIFAR-10: 166 x 300 + 200). The loss is the mean cross-entropy of the
softmax: Keras's ``sparse_categorical_crossentropy(from_logits=False)`` on a ``softmax`` layer uses
the cached logits (``_keras_logits``), so nothing is clipped at 1e-7.

Split: ``split="resplit"`` (default, the paper's) concatenates the canonical train and test sets and
re-splits them at random per seed into the canonical sizes (60k/10k MNIST, 50k/10k CIFAR-10); the
10k held-out images are the validation set. ``split="canonical"`` keeps the canonical test set.

Metrics (``evaluate``): ``val_accuracy`` / ``val_loss`` on the held-out set and ``train_accuracy`` /
``train_loss`` on the training set, both in inference mode and on their first ``eval_size`` images
(0 = all; the task configs use a subset at smoke and quick scale and everything at paper scale);
``epoch_accuracy`` is Keras's history ``accuracy``: the running mean over the training batches since
the previous evaluation, in training mode. Losses are the data term without L2.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tasks import data
from tasks.base import ModelTask
from tasks.registry import register

SPLITS = ("resplit", "canonical")


@functools.lru_cache(maxsize=2)
def load_splits(dataset: str, data_dir: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The canonical (train, test) splits as uint8 images and labels, decoded once per process (a
    sweep's jobs reuse their worker processes)."""
    load = data.mnist if dataset == "mnist" else data.cifar10
    return load(data_dir, "train"), load(data_dir, "test")


class ImageClassifier(ModelTask):
    """Shared data pipeline, loss, regulariser and metrics of the Nlar classification tasks."""

    dataset: ClassVar[str]

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, data_dir=None, *,
                 batch_size: int = 300, l2: float = 1e-4, split: str = "resplit", eval_size: int = 0,
                 width: float = 1.0) -> None:
        """``width`` multiplies every hidden width (Dense units, conv channels; at least 1 each): 1 is the
        paper's network, smaller values make narrow versions for budget tables and tests."""
        super().__init__(seed, device, dtype, data_dir=data_dir)
        if not width > 0:
            raise ValueError(f"width={width} must be > 0")
        self.width = float(width)
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is invalid; valid: {', '.join(SPLITS)}")
        if batch_size < 1 or eval_size < 0 or l2 < 0:
            raise ValueError(f"need batch_size >= 1, eval_size >= 0, l2 >= 0; got {batch_size}, {eval_size}, {l2}")
        (x_train, y_train), (x_test, y_test) = load_splits(self.dataset, str(data.resolve_data_dir(self.data_dir)))
        if split == "resplit":
            images, labels = torch.cat([x_train, x_test]), torch.cat([y_train, y_test])
            order = torch.randperm(len(images), generator=self.generator, device=device).cpu()
            train, held_out = order[: len(x_train)], order[len(x_train):]
            x_train, y_train, x_test, y_test = images[train], labels[train], images[held_out], labels[held_out]
        self.train_set = (x_train.to(device), y_train.to(device))  # uint8 images; converted per batch
        self.val_set = (x_test.to(device), y_test.to(device))
        self.batch_size, self.keras_l2, self.eval_size = int(batch_size), float(l2), int(eval_size)
        self.steps_per_epoch = -(-len(x_train) // self.batch_size)
        self._order = torch.empty(0, dtype=torch.int64)
        self._cursor = 0
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._seen = 0
        model = self.build_model()
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, generator=self.generator)
                nn.init.zeros_(module.bias)
        self.attach(model)
        self._kernels = [p.dim() > 1 for p in self.parameters()]

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def scaled(self, units: int) -> int:
        """A hidden width of the paper's network at this task's ``width``."""
        return max(1, round(units * self.width))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the model's float inputs in [0, 1]."""
        x = images.to(self.dtype) / 255.0
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x  # CIFAR-10 is stored NHWC

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cursor >= len(self._order):
            self._order = torch.randperm(len(self.train_set[1]), generator=self.generator, device=self.device)
            self._cursor = 0
        index = self._order[self._cursor: self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return self.prepare(self.train_set[0][index]), self.train_set[1][index]

    def criterion(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, targets)

    def _regularised(self, loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Keras ``kernel_regularizer=l2(l2)``: loss + l2 * sum(W^2) over kernels only."""
        if not self.keras_l2:
            return loss
        return loss + self.keras_l2 * sum(p.square().sum() for p, k in zip(params, self._kernels, strict=True) if k)

    def loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        output = self.model(inputs)
        with torch.no_grad():
            self._correct += (output.argmax(1) == targets).sum()
            self._seen += len(targets)
        return self._regularised(self.criterion(output, targets), self.parameters())

    @torch.no_grad()
    def _measure(self, images: torch.Tensor, labels: torch.Tensor, chunk: int = 2000) -> tuple[float, float]:
        if self.eval_size:
            images, labels = images[: self.eval_size], labels[: self.eval_size]
        loss = correct = 0.0
        for start in range(0, len(labels), chunk):
            output = self.model(self.prepare(images[start: start + chunk]))
            target = labels[start: start + chunk]
            loss += float(F.cross_entropy(output, target, reduction="sum"))
            correct += float((output.argmax(1) == target).sum())
        return loss / len(labels), correct / len(labels)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            train_loss, train_accuracy = self._measure(*self.train_set)
            val_loss, val_accuracy = self._measure(*self.val_set)
        finally:
            self.model.train()
        epoch_accuracy = float(self._correct) / self._seen if self._seen else train_accuracy
        self._correct.zero_()
        self._seen = 0
        return {"val_accuracy": val_accuracy, "val_loss": val_loss, "train_accuracy": train_accuracy,
                "train_loss": train_loss, "epoch_accuracy": epoch_accuracy}

    def facts(self) -> dict[str, float]:
        return {"steps_per_epoch": self.steps_per_epoch, "train_size": len(self.train_set[1]),
                "val_size": len(self.val_set[1])}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "order": self._order.clone(), "cursor": self._cursor,
                "correct": self._correct.clone(), "seen": self._seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._order, self._cursor = state["order"].clone(), state["cursor"]
        self._correct.copy_(state["correct"])
        self._seen = state["seen"]


def mlp(sizes: list[int]) -> nn.Sequential:
    """Flatten, then Dense+ReLU layers and a final Dense (the softmax is in the loss)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register
class MnistLogReg(ImageClassifier):
    """MNIST logistic regression: 784 -> Dense(10, softmax) with bias (``mnist_logistic``)."""

    name = "mnist_logreg"
    dataset = "mnist"

    def build_model(self) -> nn.Module:
        return mlp([784, 10])


@register
class MnistMLP2h(ImageClassifier):
    """MNIST MLP2h: 784 -> 1000 ReLU -> 1000 ReLU -> 10 softmax (``mnist_mlp``; Nlar Figure 2)."""

    name = "mnist_mlp2h"
    offers = frozenset({"hidden_matrices"})
    dataset = "mnist"

    def build_model(self) -> nn.Module:
        return mlp([784, self.scaled(1000), self.scaled(1000), 10])


@register
class Cifar10MLP7h(ImageClassifier):
    """CIFAR-10 MLP7h: 3072 -> 7 x (512 ReLU) -> 10 softmax (``cifar10_mlp7h``)."""

    name = "cifar10_mlp7h"
    offers = frozenset({"hidden_matrices"})
    dataset = "cifar10"

    def build_model(self) -> nn.Module:
        return mlp([3072, *[self.scaled(512)] * 7, 10])


VGG11_BLOCKS = ((64,), (128,), (256, 256), (512, 512), (512, 512))


@register
class Cifar10VGG11(ImageClassifier):
    """The Nlar code's VGG11 variant (``cifar10_vgg11``): five blocks of 3x3 'same' ReLU convolutions
    (64 | 128 | 256, 256 | 512, 512 | 512, 512), each block followed by MaxPool2 and then BatchNorm
    (BN after pooling, Keras momentum 0.99 / eps 1e-3), no dropout; head Dense 4096 ReLU -> 4096
    ReLU -> 10 softmax."""

    name = "cifar10_vgg11"
    offers = frozenset({"hidden_matrices"})
    dataset = "cifar10"

    def build_model(self) -> nn.Module:
        layers: list[nn.Module] = []
        channels = 3
        for block in VGG11_BLOCKS:
            for width in block:
                layers += [nn.Conv2d(channels, self.scaled(width), 3, padding=1), nn.ReLU()]
                channels = self.scaled(width)
            layers += [nn.MaxPool2d(2), nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)]
        return nn.Sequential(*layers, mlp([channels, self.scaled(4096), self.scaled(4096), 10]))
