"""Sparse matrices in any of the forms the readers and the model hold them, as scipy CSC."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from ..errors import FileFormatError

__all__ = ["check_csc", "sparse_to_scipy"]

_FIX = " The file is damaged or was not written by cnmf.save(); save the result again."


def check_csc(
    data_shape: tuple[int, ...],
    indices: Any,
    indptr: Any,
    shape: tuple[int, int],
    where: str,
    fix: str = _FIX,
) -> None:
    """Check CSC triplets fully: a bad one would give wrong frames silently.

    ``indptr`` has ``K + 1`` integer entries, starts at 0, never decreases and ends at the
    number of stored values; ``data`` and ``indices`` are 1-D of that length; every row index
    is an integer in ``0..P-1``. ``indices`` and ``indptr`` are anything ``np.asarray`` reads
    (an h5py or zarr array is read whole: a few bytes per stored value).

    Raises
    ------
    FileFormatError
        Naming ``where``, what is wrong and where.
    """
    P, K = shape
    if P < 0 or K < 0:
        raise FileFormatError(f"{where}: shape is {shape}; sizes must not be negative.{fix}")
    if len(data_shape) != 1 or tuple(indices.shape) != tuple(data_shape):
        raise FileFormatError(
            f"{where}: data {tuple(data_shape)} and indices {tuple(indices.shape)} must be 1-D "
            f"arrays of one length (one row index per stored value).{fix}"
        )
    nnz = int(data_shape[0])
    if np.dtype(indptr.dtype).kind not in "iu" or np.dtype(indices.dtype).kind not in "iu":
        raise FileFormatError(
            f"{where}: indptr ({indptr.dtype}) and indices ({indices.dtype}) must be integers.{fix}"
        )
    ptr = np.asarray(indptr[...], dtype=np.int64).ravel()
    if ptr.shape != (K + 1,):
        raise FileFormatError(
            f"{where}: indptr has {ptr.shape[0]} entries but shape {shape} needs K + 1 = "
            f"{K + 1}.{fix}"
        )
    if ptr[0] != 0 or ptr[-1] != nnz:
        raise FileFormatError(
            f"{where}: indptr runs from {int(ptr[0])} to {int(ptr[-1])} but must run from "
            f"0 to the {nnz} stored values.{fix}"
        )
    drops = np.flatnonzero(np.diff(ptr) < 0)
    if drops.size:
        raise FileFormatError(
            f"{where}: indptr decreases after column(s) {drops[:10].tolist()} "
            f"({drops.size} place(s)); it must never decrease.{fix}"
        )
    if nnz:
        rows = np.asarray(indices[...])
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= P:
            nbad = int(((rows < 0) | (rows >= P)).sum())
            raise FileFormatError(
                f"{where}: {nbad} row indices lie outside 0..{P - 1} (range {lo}..{hi}) for "
                f"shape {shape}.{fix}"
            )


def sparse_to_scipy(x: Any) -> scipy.sparse.csc_matrix:
    """A pydata-sparse, scipy-sparse or dense 2D array as scipy CSC."""
    if scipy.sparse.issparse(x):
        return scipy.sparse.csc_matrix(x)
    if hasattr(x, "to_scipy_sparse"):
        return scipy.sparse.csc_matrix(x.to_scipy_sparse())
    return scipy.sparse.csc_matrix(np.asarray(x))
