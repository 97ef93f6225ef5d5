"""ResNet-18 on CIFAR-10, LODO's setup (papers/lodo.md §3.4): torchvision's resnet18 with a 3x3 stem and no
max-pool (11,173,962 parameters at width 1, the kuangliu CIFAR ResNet-18 the LODO code ran), batches of
2048 from a per-epoch shuffle (the last batch of an epoch is the remainder, 848 images), pad-4 /
random-crop-32 / random-flip augmentation done on tensors, cross-entropy plus 1e-4 * 1/2 ||w||^2 over all
trainable weights, test accuracy on the test set.

BatchNorm: the LODO code calls its Keras model without ``training=True`` and sets weights through
``set_weights``, so BN ran in inference mode with moving mean 0 and variance 1 that never update -- a
learnable per-channel affine layer (§3.4, "BatchNorm caveat"). ``batchnorm="frozen"`` (the default)
reproduces that; ``batchnorm="train"`` uses batch statistics in training and running statistics in
evaluation (the usual PyTorch practice). The Keras model ends in a softmax fed to a probability
cross-entropy (clipped at 1e-7); we use the logits' cross-entropy, identical while p > 1e-7.

``width`` multiplies every channel count (64/128/256/512), so ``scale=quick`` fits a 2-core CPU;
``train_size`` / ``test_size`` (0 = all) take the first images of each split.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.base import ModelTask
from tasks.data import cifar10
from tasks.registry import register

BATCHNORM_MODES = ("frozen", "train")


def cifar_resnet18(width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem, no max-pool and channels scaled by ``width``."""
    # Imported here: torchvision.models costs ~2.4 s per process, and every runner process imports tasks.
    from torchvision.models.resnet import BasicBlock, ResNet

    def channels(planes: int) -> int:
        return max(1, round(planes * width))

    class CifarResNet18(ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # torchvision sets inplanes = 64 before the first stage
                self.inplanes = channels(64)
            return super()._make_layer(block, channels(planes), blocks, stride, dilate)

    model = CifarResNet18(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, channels(64), kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.bn1 = nn.BatchNorm2d(channels(64))
    model.maxpool = nn.Identity()
    model.fc = nn.Linear(channels(512), num_classes)
    return model


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back at a random offset per image and flip half of them, all on tensors."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=images.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=images.device))[:, None, None, :]
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * pad)).gather(3, cols.expand(n, c, h, w))
    flip = torch.rand(n, generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@register
class Cifar10ResNet18(ModelTask):
    """ResNet-18 on CIFAR-10 as LODO ran it (papers/lodo.md §3.4); metrics: test loss and accuracy."""

    name = "cifar10_resnet18"
    offers = frozenset({"hidden_matrices"})

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, *, width: float = 1.0,
                 batch_size: int = 2048, l2: float = 1e-4, batchnorm: str = "frozen", augmentation: bool = True,
                 channels_last: bool = True, train_size: int = 0, test_size: int = 0, eval_batch: int = 1000,
                 **context: Any) -> None:
        super().__init__(seed, device, dtype, **context)
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm={batchnorm!r} invalid; valid: {', '.join(BATCHNORM_MODES)}")
        if not width > 0 or batch_size < 1:
            raise ValueError(f"width={width} must be > 0 and batch_size={batch_size} >= 1")
        self.l2, self.batch_size, self.batchnorm = l2, batch_size, batchnorm
        self.augmentation, self.eval_batch = augmentation, eval_batch
        # torch 2.14's CPU backward of a 1x1 stride-2 channels_last conv with 4 input channels corrupts the
        # heap (width 1/16); below 8 stem channels we keep the contiguous format.
        narrow = round(64 * width) < 8
        self.memory_format = torch.channels_last if channels_last and not narrow else torch.contiguous_format
        train_x, train_y = cifar10(self.data_dir, "train")
        test_x, test_y = cifar10(self.data_dir, "test")
        if train_size:
            train_x, train_y = train_x[:train_size], train_y[:train_size]
        if test_size:
            test_x, test_y = test_x[:test_size], test_y[:test_size]
        # uint8 NCHW on the device; normalised per batch with the training set's per-channel mean and std.
        self.train_x = train_x.permute(0, 3, 1, 2).contiguous().to(device)
        self.test_x = test_x.permute(0, 3, 1, 2).contiguous().to(device)
        self.train_y, self.test_y = train_y.to(device), test_y.to(device)
        pixels = self.train_x.to(torch.float64).div_(255).transpose(0, 1).reshape(3, -1)
        self.mean = pixels.mean(1).to(dtype).view(1, 3, 1, 1).to(device)
        self.std = pixels.std(1).to(dtype).view(1, 3, 1, 1).to(device)
        del pixels
        self.attach(cifar_resnet18(width).to(memory_format=self.memory_format))
        self.model.train(batchnorm == "train")
        self._order = torch.empty(0, dtype=torch.int64, device=device)
        self._cursor = 0

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.dtype).div_(255).sub_(self.mean).div_(self.std)
        return x

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the epoch's shuffle (a new permutation when the epoch ends)."""
        if self._cursor >= len(self._order):
            self._order = torch.randperm(len(self.train_y), generator=self.generator, device=self.device)
            self._cursor = 0
        index = self._order[self._cursor:self._cursor + self.batch_size]
        self._cursor += len(index)
        x = self._inputs(self.train_x[index])
        if self.augmentation:
            x = augment(x, self.generator)
        return x.contiguous(memory_format=self.memory_format), self.train_y[index]

    def criterion(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, targets)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Cross-entropy and accuracy on the test set (LODO's "validation" metrics use the test set)."""
        self.model.eval()
        total_loss, correct = 0.0, 0
        for start in range(0, len(self.test_y), self.eval_batch):
            x = self._inputs(self.test_x[start:start + self.eval_batch]).contiguous(memory_format=self.memory_format)
            y = self.test_y[start:start + self.eval_batch]
            logits = self.model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        self.model.train(self.batchnorm == "train")
        count = len(self.test_y)
        return {"test_loss": total_loss / count, "test_accuracy": correct / count}

    def facts(self) -> dict[str, float]:
        return {"parameters": sum(p.numel() for p in self.parameters())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "order": self._order.clone(), "cursor": self._cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._order, self._cursor = state["order"].to(self.device), state["cursor"]
