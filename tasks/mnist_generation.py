"""LODO's autoregressive MNIST image generation with a residual atan CNN (papers/lodo.md §3.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tasks.base import ModelTask
from tasks.data import mnist
from tasks.registry import register

SIDE = 28
PIXELS = SIDE * SIDE
TRAIN = 59_936  # the first 59,936 training images; the last 64 are the validation set


def masked_inputs(images: Tensor, rows: Tensor, cols: Tensor, dtype: torch.dtype) -> Tensor:
    """The 5-channel input [B, 5, 28, 28] for uint8 ``images`` [B, 28, 28] queried at (rows, cols):
    intensity/256 x visible, 2[col <= c] - 1, 2 visible - 1, 2 row/28 - 1, 2 col/28 - 1, where a pixel
    is visible when it comes before the query in raster order (row < r, or row = r and col < c)."""
    b, device = images.shape[0], images.device
    grid = torch.arange(SIDE, device=device, dtype=dtype)
    row_grid, col_grid = grid[:, None].expand(SIDE, SIDE), grid[None, :].expand(SIDE, SIDE)
    index = torch.arange(PIXELS, device=device).view(1, SIDE, SIDE)
    visible = (index < (rows * SIDE + cols).view(b, 1, 1)).to(dtype)
    left = (grid.view(1, 1, SIDE) <= cols.to(dtype).view(b, 1, 1)).to(dtype).expand(b, SIDE, SIDE)
    return torch.stack([
        images.to(dtype) / 256.0 * visible,
        2.0 * left - 1.0,
        2.0 * visible - 1.0,
        (2.0 * row_grid / SIDE - 1.0).expand(b, SIDE, SIDE),
        (2.0 * col_grid / SIDE - 1.0).expand(b, SIDE, SIDE),
    ], dim=1)


class ResidualBlock(nn.Module):
    """x + conv1x1(120->20)(atan(depthwise3x3 x3 (40->120)(atan(conv1x1(20->40)(x)))))."""

    def __init__(self, width: int = 20, hidden: int = 40, multiplier: int = 3) -> None:
        super().__init__()
        self.expand = nn.Conv2d(width, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden * multiplier, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden * multiplier, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(torch.atan(self.depthwise(torch.atan(self.expand(x)))))


class AtanCNN(nn.Module):
    """1x1 conv 5->20, then 5 stages of 4 residual blocks and a 2x2 average pool (TF 'SAME': the
    partial window at an odd edge averages only its valid pixels, as ceil_mode does), 28 -> 14 -> 7 ->
    4 -> 2 -> 1, then a dense 20 -> 256. 94,696 parameters; no normalisation layers."""

    def __init__(self, width: int = 20, stages: int = 5, blocks: int = 4, classes: int = 256) -> None:
        super().__init__()
        self.stem = nn.Conv2d(5, width, 1)
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [ResidualBlock(width, 2 * width) for _ in range(blocks)]
            layers.append(nn.AvgPool2d(2, stride=2, ceil_mode=True))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Every weight and bias ~ N(0, 1/(fan_in + 1)), fan_in = input channels (9 for the depthwise
        3x3 conv), as the official code initialises them."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    fan_in = module.weight[0].numel()
                    std = 1.0 / math.sqrt(fan_in + 1)
                    for p in (module.weight, module.bias):
                        p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)).flatten(1))


@register
class MNISTGeneration(ModelTask):
    """Predict the intensity (256 classes) of a random query pixel from the pixels before it in
    raster order (papers/lodo.md §3.3). Training: ``batch_size`` images drawn uniformly with
    replacement from the first 59,936 MNIST training images, one query pixel per image; mean
    softmax cross-entropy (chance: ln 256 = 5.545).

    ``evaluate()``: validation loss over the last 64 training images x all 784 positions (or the
    first ``val_positions`` of a fixed random order of positions, the same for every image, when set).
    ``final_metrics()`` (once, at the end of a run): test loss over the 10,000 test images x 784
    positions, or over ``test_pairs`` fixed random (image, position) pairs when set (an unbiased
    estimate; the same pairs for every run). The paper ran float64; the default here is float32.
    """

    name = "mnist_generation"
    offers = frozenset({"hidden_matrices"})

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype, batch_size: int = 256,
                 val_positions: int | None = None, test_pairs: int | None = None, eval_chunk: int = 1024,
                 width: int = 20, **context) -> None:
        """``width``: the CNN's channels (hidden 2 x width in the blocks); 20 is the paper's network,
        smaller values are for tests."""
        if batch_size < 1 or eval_chunk < 1 or width < 1:
            raise ValueError(f"invalid mnist_generation options batch_size={batch_size} eval_chunk={eval_chunk} "
                             f"width={width}")
        if val_positions is not None and not 1 <= val_positions <= PIXELS:
            raise ValueError(f"val_positions={val_positions} must be in [1, {PIXELS}] or null (all)")
        super().__init__(seed, device, dtype, **context)
        images, _ = mnist(self.data_dir, "train")
        self.train_images = images[:TRAIN].to(device)
        self.val_images = images[TRAIN:].to(device)
        self.test_images = None  # loaded by final_metrics
        self.batch_size, self.eval_chunk = batch_size, eval_chunk
        self.val_positions, self.test_pairs = val_positions, test_pairs
        self.model_seed = seed
        model = AtanCNN(width)
        model.reset_parameters(torch.Generator().manual_seed(seed))
        self.attach(model)

    def sample_batch(self) -> tuple[Tensor, Tensor]:
        g, device = self.generator, self.device
        index = torch.randint(0, len(self.train_images), (self.batch_size,), generator=g, device=device)
        rows = torch.randint(0, SIDE, (self.batch_size,), generator=g, device=device)
        cols = torch.randint(0, SIDE, (self.batch_size,), generator=g, device=device)
        images = self.train_images[index]
        return masked_inputs(images, rows, cols, self.dtype), images[torch.arange(self.batch_size), rows, cols].long()

    def criterion(self, output: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output, targets)

    @torch.no_grad()
    def pairs_loss(self, images: Tensor, image_index: Tensor, positions: Tensor) -> float:
        """Mean cross-entropy over the (image, position) pairs, in chunks of ``eval_chunk``."""
        total = 0.0
        for start in range(0, len(image_index), self.eval_chunk):
            idx, pos = image_index[start:start + self.eval_chunk], positions[start:start + self.eval_chunk]
            chosen = images[idx]
            rows, cols = pos // SIDE, pos % SIDE
            logits = self.model(masked_inputs(chosen, rows, cols, self.dtype))
            targets = chosen[torch.arange(len(idx), device=self.device), rows, cols].long()
            total += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        return total / len(image_index)

    def _all_pairs(self, count: int, positions: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.arange(count, device=self.device).repeat_interleave(len(positions)),
                positions.to(self.device).repeat(count))

    def evaluate(self) -> dict[str, float]:
        positions = torch.arange(PIXELS)
        if self.val_positions is not None:
            positions = torch.randperm(PIXELS, generator=torch.Generator().manual_seed(0))[: self.val_positions]
        return {"val_loss": self.pairs_loss(self.val_images, *self._all_pairs(len(self.val_images), positions))}

    def final_metrics(self) -> dict[str, float]:
        if self.test_images is None:
            self.test_images = mnist(self.data_dir, "test")[0].to(self.device)
        count = len(self.test_images)
        if self.test_pairs is None:
            pairs = self._all_pairs(count, torch.arange(PIXELS))
        else:
            g = torch.Generator().manual_seed(0)
            pairs = (torch.randint(0, count, (self.test_pairs,), generator=g).to(self.device),
                     torch.randint(0, PIXELS, (self.test_pairs,), generator=g).to(self.device))
        return {"test_loss": self.pairs_loss(self.test_images, *pairs)}

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None, pixels: int = PIXELS) -> Tensor:
        """Draw ``count`` digits pixel by pixel in raster order from the model: uint8 [count, 28, 28]
        (only the first ``pixels`` positions are drawn, the rest stay 0: for quick checks)."""
        images = torch.zeros(count, SIDE, SIDE, dtype=torch.uint8, device=self.device)
        for pos in range(pixels):
            r, c = divmod(pos, SIDE)
            rows = torch.full((count,), r, device=self.device)
            cols = torch.full((count,), c, device=self.device)
            probs = torch.softmax(self.model(masked_inputs(images, rows, cols, self.dtype)).double(), dim=1)
            images[:, r, c] = torch.multinomial(probs.cpu(), 1, generator=generator).view(-1).to(self.device,
                                                                                                  torch.uint8)
        return images
