"""Data sets on disk (DESIGN.md, "Data"): ``<data_dir>/mnist/`` holds the four IDX .gz files,
``<data_dir>/cifar10/`` torchvision's ``cifar-10-batches-py``. Where a file is missing the loader
downloads it through torchvision when the machine is online, and otherwise stops with a
``DataError`` that says which file to put where. Corrupt files stop with the file's name and what
was wrong; nothing is unpickled except CIFAR-10's own batches, through torchvision.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
IDX_MAGIC = {3: 2051, 1: 2049}  # images (3 dims), labels (1 dim), unsigned bytes


class DataError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message names the file and the fix."""


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir or os.environ.get("OPTBENCH_DATA_DIR", "data")).expanduser()


def read_idx(path: Path, dims: int, count: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with ``dims`` dimensions and ``count`` items, checked."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error}); replace it with the original IDX file") from None
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    if magic != IDX_MAGIC[dims] or shape[0] != count:
        raise DataError(f"{path}: bad IDX header (magic {magic}, shape {shape}); expected magic "
                        f"{IDX_MAGIC[dims]} and {count} items")
    expected = header + int(torch.tensor(shape).prod())
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape} (truncated?)")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _download_mnist(folder: Path) -> None:
    """Fetch the IDX files with torchvision into ``folder`` (online machines only)."""
    from torchvision.datasets import MNIST

    staging = folder / "_torchvision"
    try:
        MNIST(str(staging), download=True)
    except Exception as error:  # torchvision raises several kinds when offline
        raise DataError(
            f"MNIST files are missing from {folder} and could not be downloaded ({type(error).__name__}). "
            f"Put {', '.join(f for s in MNIST_FILES.values() for f in s[:2])} there, or set OPTBENCH_DATA_DIR "
            "to a directory whose mnist/ holds them."
        ) from None
    for path in (staging / "MNIST" / "raw").glob("*.gz"):
        path.replace(folder / path.name)


def mnist(data_dir: str | Path | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` ("train" or "test") as (uint8 images [N, 28, 28], int64 labels [N])."""
    folder = resolve_data_dir(data_dir) / "mnist"
    images_file, labels_file, count = MNIST_FILES[split]
    if not (folder / images_file).exists() or not (folder / labels_file).exists():
        folder.mkdir(parents=True, exist_ok=True)
        _download_mnist(folder)
    images = read_idx(folder / images_file, 3, count)
    labels = read_idx(folder / labels_file, 1, count).long()
    if images.shape[1:] != (28, 28) or int(labels.max()) > 9:
        raise DataError(f"{folder}: MNIST {split} files have shape {tuple(images.shape)} / labels up to "
                        f"{int(labels.max())}; expected 28x28 images and labels 0..9")
    return images, labels


def cifar10(data_dir: str | Path | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` as (uint8 images [N, 32, 32, 3], int64 labels [N]) through torchvision's
    loader, which reads ``<data_dir>/cifar10/cifar-10-batches-py`` (the real on-disk format)."""
    from torchvision.datasets import CIFAR10

    class PresentCIFAR10(CIFAR10):
        """torchvision's loader, checking that every file is present rather than its MD5, so a small
        data set in the real format loads too (tests); a corrupt batch still fails to unpickle."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all((folder / name).is_file() for name in names)

        def _load_meta(self) -> None:
            self.meta = {**self.meta, "md5": None}  # check_integrity(path, None) tests presence only
            super()._load_meta()

    root = resolve_data_dir(data_dir) / "cifar10"
    present = (root / "cifar-10-batches-py").is_dir()
    try:
        data = PresentCIFAR10(str(root), train=split == "train", download=not present)
    except RuntimeError as error:
        raise DataError(f"CIFAR-10 not found or corrupt under {root} ({error}). Download it online "
                        "(torchvision does this automatically) or copy cifar-10-batches-py there.") from None
    except Exception as error:  # offline download, or a batch file that fails to unpickle
        raise DataError(f"CIFAR-10 under {root} could not be loaded ({type(error).__name__}: {error}); "
                        "put torchvision's cifar-10-batches-py there.") from None
    return torch.from_numpy(data.data), torch.tensor(data.targets, dtype=torch.int64)
