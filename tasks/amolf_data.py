"""The AMOLF thesis's regression data (papers/amolf.md §4; data/ipnnl/SOURCE.md): the IPNNL files,
the generated matrix-inversion set, and the 10-fold split of the table protocol.

An IPNNL file is whitespace-separated ASCII, one pattern = N inputs then M outputs, with patterns
spanning several lines in some files: it is read as one number stream and reshaped to
(N_v, N+M), as MATLAB's ``fscanf(fid, '%f')`` does. A missing, corrupt or wrong-sized file stops with a
``DataError`` that names the file, the expected N and M (and N_v) and what was found.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.data import DataError, resolve_data_dir


@dataclass(frozen=True)
class DataSet:
    file: str
    n_inputs: int
    n_outputs: int
    n_patterns: int  # as counted in SOURCE.md; a different count means a different file


IPNNL = {
    "twod": DataSet("Twod.tra", 8, 7, 1768),
    "single2": DataSet("single2.tra", 16, 3, 5992),
    "oh7": DataSet("oh7.tra", 20, 3, 10453),
    "concrete": DataSet("concrete.tra", 8, 1, 730),
    "housing": DataSet("housing.tra", 13, 1, 350),
}


@functools.lru_cache(maxsize=8)
def _read(path: Path, n_inputs: int, n_outputs: int, n_patterns: int | None) -> np.ndarray:
    expected = f"expected N={n_inputs} inputs + M={n_outputs} outputs per pattern"
    if n_patterns:
        expected += f" and {n_patterns} patterns"
    try:
        tokens = path.read_bytes().split()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error}); put the IPNNL file there "
                        f"(see data/ipnnl/SOURCE.md) or set OPTBENCH_DATA_DIR; {expected}") from None
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        for i, token in enumerate(tokens):
            try:
                float(token)
            except ValueError:
                shown = token[:40].decode("latin-1")
                raise DataError(f"{path}: number {i + 1} is not a number ({shown!r}); corrupt file? "
                                f"{expected}") from None
        raise
    width = n_inputs + n_outputs
    if values.size == 0 or values.size % width:
        raise DataError(f"{path}: found {values.size} numbers, not a multiple of N+M={width} ({expected}); "
                        "wrong file or truncated?")
    rows = values.size // width
    if n_patterns and rows != n_patterns:
        raise DataError(f"{path}: found {rows} patterns of {width} numbers ({values.size} numbers); {expected}")
    if not np.isfinite(values).all():
        raise DataError(f"{path}: contains non-finite values; {expected}")
    return values.reshape(rows, width)


def read_patterns(path: str | Path, n_inputs: int, n_outputs: int,
                  n_patterns: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N_v, N), targets (N_v, M)) of an IPNNL file, float64, checked."""
    data = torch.from_numpy(_read(Path(path), n_inputs, n_outputs, n_patterns).copy())
    return data[:, :n_inputs], data[:, n_inputs:]


def ipnnl(name: str, data_dir: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    spec = IPNNL[name]
    path = resolve_data_dir(data_dir) / "ipnnl" / spec.file
    return read_patterns(path, spec.n_inputs, spec.n_outputs, spec.n_patterns)


def mattrn(n_patterns: int = 2000, seed: int = 0, det_range: tuple[float, float] = (0.3, 2.0)
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The matrix-inversion set (thesis Appendix A; papers/amolf.md §4): 2x2 matrices [a b; c d] with
    entries i.i.d. Uniform(0, 1), kept when the (signed) determinant lies in ``det_range``;
    inputs (a, b, c, d), outputs the inverse's elements in the same row-major order.
    The original MAT.TRN is not available; this stand-in is generated from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    kept: list[torch.Tensor] = []
    count = 0
    while count < n_patterns:
        m = torch.rand(8 * n_patterns, 4, generator=gen, dtype=torch.float64)
        det = m[:, 0] * m[:, 3] - m[:, 1] * m[:, 2]
        m = m[(det >= det_range[0]) & (det <= det_range[1])]
        kept.append(m)
        count += m.shape[0]
    x = torch.cat(kept)[:n_patterns]
    a, b, c, d = x.unbind(1)
    det = a * d - b * c
    t = torch.stack([d, -b, -c, a], 1) / det.unsqueeze(1)
    return x, t


def fold_indices(n: int, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, validation, test) pattern indices of the table protocol (thesis §6.2): a random
    permutation (``seed``) cut into ``folds`` near-equal parts; part ``fold`` is the test set, part
    ``fold + 1`` (cyclically) the validation set, the other parts the training set."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    parts = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tensor_split(folds)
    val = (fold + 1) % folds
    train = torch.cat([p for i, p in enumerate(parts) if i not in (fold, val)])
    return train.sort().values, parts[val].sort().values, parts[fold].sort().values
