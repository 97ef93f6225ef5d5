"""Data loading: MNIST from IDX files, CIFAR-10 in torchvision's on-disk format, and clear errors."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

from tasks.data import DataError, cifar10, mnist

SHARED = Path(os.environ.get("OPTBENCH_DATA_DIR", "data"))
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="MNIST not in OPTBENCH_DATA_DIR")


@needs_mnist
def test_mnist_loads_both_splits():
    images, labels = mnist(SHARED, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))


@needs_mnist
def test_bad_idx_header_and_truncation_name_the_file(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED / "mnist" / name, folder / name)
    raw = bytearray(gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes()))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw[:-100])))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: .* bytes, expected .*truncated"):
        mnist(tmp_path, "test")
    raw[3] = 7  # break the magic number
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: bad IDX header"):
        mnist(tmp_path, "test")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        mnist(tmp_path, "test")


def test_missing_mnist_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match=r"missing from .*mnist .*could not be downloaded.*t10k-images-idx3-ubyte.gz"):
        mnist(tmp_path, "test")


def test_cifar10_reads_the_real_on_disk_format(tiny_cifar10):
    images, labels = cifar10(tiny_cifar10, "train")
    assert images.shape == (100, 32, 32, 3) and images.dtype == torch.uint8
    test_images, _ = cifar10(tiny_cifar10, "test")
    assert test_images.shape == (20, 32, 32, 3)
    assert labels.min() >= 0 and labels.max() <= 9


def test_corrupt_cifar10_batch_is_a_clear_error(tiny_cifar10):
    (tiny_cifar10 / "cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="CIFAR-10 under .* could not be loaded"):
        cifar10(tiny_cifar10, "train")
