"""Block kernels for frames: plain NumPy / numba functions, no dask inside.

:func:`frames` writes frames in C pixel order into a caller-provided ``out`` array of shape
``(n, npix)`` (C-contiguous), so results never need a Fortran→C transpose; the footprints are
permuted to C pixel order once, beforehand. :func:`frames_reference` is its plain NumPy twin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse

__all__ = [
    "MomentsOperator",
    "c_to_f_permutation",
    "frames",
    "frames_reference",
    "prepare_moments",
    "residual_moments",
]


def c_to_f_permutation(dims: Sequence[int]) -> np.ndarray:
    """``perm[p_c] = p_f``: the Fortran (CaImAn) index of each pixel taken in C order."""
    P = math.prod(dims)
    return np.arange(P, dtype=np.int64).reshape(tuple(dims), order="F").ravel(order="C")


@numba.njit(cache=True, nogil=True)
def _add_frame(o, indptr, indices, data, c, b, f, alpha):  # pragma: no cover - compiled
    """``o += alpha * (b @ f + A @ c)`` for one frame (A in CSC: scatter its columns)."""
    nb = b.shape[1]
    P = o.shape[0]
    if nb == 1:
        f0 = alpha * f[0]
        for p in range(P):
            o[p] += b[p, 0] * f0
    elif nb == 2:
        f0 = alpha * f[0]
        f1 = alpha * f[1]
        for p in range(P):
            o[p] += b[p, 0] * f0 + b[p, 1] * f1
    elif nb > 2:
        for p in range(P):
            acc = 0.0
            for r in range(nb):
                acc += b[p, r] * f[r]
            o[p] += alpha * acc
    K = c.shape[0]
    for k in range(K):
        ck = c[k] * alpha
        if ck != 0.0:
            for j in range(indptr[k], indptr[k + 1]):
                o[indices[j]] += data[j] * ck


@numba.njit(cache=True, nogil=True)
def _set_minus_lowrank(o, y, b, f):  # pragma: no cover - compiled
    """``o = y - b @ f`` for one C-ordered frame ``y`` (one streaming pass)."""
    P = o.shape[0]
    nb = b.shape[1]
    if nb == 0:
        for p in range(P):
            o[p] = y[p]
    elif nb == 1:
        f0 = f[0]
        for p in range(P):
            o[p] = y[p] - b[p, 0] * f0
    elif nb == 2:
        f0 = f[0]
        f1 = f[1]
        for p in range(P):
            o[p] = y[p] - (b[p, 0] * f0 + b[p, 1] * f1)
    else:
        for p in range(P):
            acc = 0.0
            for r in range(nb):
                acc += b[p, r] * f[r]
            o[p] = y[p] - acc


def frames(
    out: np.ndarray,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None = None,
    ft: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> None:
    """Write ``out[t] = Y[t] − (b @ ft[t] + A @ Ct[t])``, or ``b @ ft[t] + A @ Ct[t]`` without Y.

    Frame by frame, so each output frame is initialised and accumulated while it sits in
    cache: the movie (or zeros) first, then the low-rank term as an explicit multiply-add, then
    the footprints of the non-zero traces scattered in (CSC columns, rows = pixels in C order).

    Parameters
    ----------
    out
        ``(n, npix)`` C-contiguous, float32 or float64.
    A
        CSC ``(npix, K)``, rows in the output's pixel order.
    Ct
        Traces ``(n, K)``.
    b, ft
        Low-rank background ``(npix, nb)`` and ``(n, nb)``, or ``None``.
    Y
        Movie frames ``(n, ...)`` with ``npix`` pixels each, any strides (e.g. a transposed
        memmap view), or ``None``.
    """
    n, npix = out.shape
    if n == 0:
        return
    dt = out.dtype
    if b is None or ft is None:
        b = np.zeros((npix, 0), dt)
        ft = np.zeros((n, 0), dt)
    b = np.ascontiguousarray(b, dtype=dt)
    ft = np.ascontiguousarray(ft, dtype=dt)
    Ct = np.ascontiguousarray(Ct, dtype=dt)
    data = A.data if A.data.dtype == dt else A.data.astype(dt)
    alpha = dt.type(1.0 if Y is None else -1.0)
    no_b = np.zeros((npix, 0), dt)
    for t in range(n):
        o = out[t]
        if Y is None:
            o.fill(0)
            _add_frame(o, A.indptr, A.indices, data, Ct[t], b, ft[t], alpha)
            continue
        # NumPy reorders a transposed (frame-major memmap) or strided (pixel-major memmap)
        # frame fastest in its own dtype; then one pass subtracts the background
        y = np.ascontiguousarray(Y[t]).reshape(-1)
        _set_minus_lowrank(o, y, b, ft[t])
        _add_frame(o, A.indptr, A.indices, data, Ct[t], no_b, ft[t, :0], alpha)


#: Pixels per tile of :func:`_residual_moments` (tile accumulators stay in L2).
_TILE = 4096


@numba.njit(cache=True, nogil=True)
def _residual_moments(y, qloc, idx, indptr, data, ct, bT, ft, mean, m2, mn, mx):  # pragma: no cover
    """Per-pixel mean, M2, min, max over the frames of ``r = y - b @ f - A @ c``, one pass.

    Pixel tiles outer, frames inside: the tile's background rows, footprint entries and
    accumulators stay in cache while the frames stream by, so every input is read once and the
    residual block is never stored. Each step is a simple loop over the tile (the movie row,
    the background, the footprint entries of the tile, the accumulation). Sums are of
    ``r - r[0]`` (shifted data; exactly 0 for a constant pixel), in float64.
    """
    n, P = y.shape
    nb = bT.shape[0]
    tile = _TILE
    s1 = np.empty(tile)
    s2 = np.empty(tile)
    sh = np.empty(tile)
    lo = np.empty(tile)
    hi = np.empty(tile)
    r = np.empty(tile)
    for p0 in range(0, P, tile):
        p1 = min(P, p0 + tile)
        w = p1 - p0
        j0 = indptr[p0]
        j1 = indptr[p1]
        # (sub-views with 0-based loops let LLVM vectorise; offset indexing would not)
        for t in range(n):
            yt = y[t, p0:p1]
            for q in range(w):
                r[q] = yt[q]
            for i in range(nb):
                bi = bT[i, p0:p1]
                fi = ft[t, i]
                for q in range(w):
                    r[q] -= bi[q] * fi
            c = ct[t]
            for j in range(j0, j1):  # unsigned indices: no wrap-around checks
                r[qloc[j]] -= data[j] * c[idx[j]]
            if t == 0:
                for q in range(w):
                    sh[q] = r[q]
                    lo[q] = r[q]
                    hi[q] = r[q]
                    s1[q] = 0.0
                    s2[q] = 0.0
            else:
                for q in range(w):
                    v = r[q]
                    d = v - sh[q]
                    s1[q] += d
                    s2[q] += d * d
                    lo[q] = min(lo[q], v)
                    hi[q] = max(hi[q], v)
        mean_t = mean[p0:p1]
        m2_t = m2[p0:p1]
        mn_t = mn[p0:p1]
        mx_t = mx[p0:p1]
        for q in range(w):
            mean_t[q] = sh[q] + s1[q] / n
            var = s2[q] - s1[q] * s1[q] / n
            m2_t[q] = var if var > 0.0 else 0.0
            mn_t[q] = lo[q]
            mx_t[q] = hi[q]


@dataclass(frozen=True)
class MomentsOperator:
    """Footprints and background prepared once for :func:`residual_moments`."""

    qloc: np.ndarray  # uint32: each footprint entry's pixel, relative to its tile
    idx: np.ndarray  # uint32: each entry's component
    indptr: np.ndarray  # CSR row pointers (pixels)
    data: np.ndarray  # float64 entry values
    bT: np.ndarray  # (nb, npix) float64 background, pixels contiguous

    @property
    def npix(self) -> int:
        return len(self.indptr) - 1


def prepare_moments(A: scipy.sparse.spmatrix, b: np.ndarray | None) -> MomentsOperator:
    """Prepare ``A`` (npix x K, any sparse format) and ``b`` (npix x nb) for the fused pass."""
    A = scipy.sparse.csr_matrix(A)
    P = A.shape[0]
    rows = np.repeat(np.arange(P, dtype=np.int64), np.diff(A.indptr))
    return MomentsOperator(
        qloc=(rows % _TILE).astype(np.uint32),
        idx=A.indices.astype(np.uint32),
        indptr=A.indptr.astype(np.int64),
        data=np.asarray(A.data, dtype=np.float64),
        bT=np.zeros((0, P)) if b is None else np.ascontiguousarray(np.asarray(b).T, np.float64),
    )


def residual_moments(
    y: np.ndarray, op: MomentsOperator, ct: np.ndarray, ft: np.ndarray | None
) -> dict[str, np.ndarray | int]:
    """Streaming statistics (``n``, ``mean``, ``m2``, ``min``, ``max``) of residual rows.

    ``y`` is ``(n, npix)`` (any float dtype), ``ct`` ``(n, K)``, ``ft`` ``(n, nb)``; pixels in
    the operator's order. The result has the keys of
    :func:`caiman_dask._streaming.block_stats` (``corr=False``).
    """
    n, P = y.shape
    out = {k: np.empty(P) for k in ("mean", "m2", "min", "max")}
    if n:
        _residual_moments(
            np.ascontiguousarray(y),
            op.qloc,
            op.idx,
            op.indptr,
            op.data,
            np.ascontiguousarray(ct, dtype=np.float64),
            op.bT,
            np.zeros((n, 0)) if ft is None else np.ascontiguousarray(ft, dtype=np.float64),
            out["mean"],
            out["m2"],
            out["min"],
            out["max"],
        )
    return {"n": n, **out}


def frames_reference(
    A: scipy.sparse.spmatrix,
    Ct: np.ndarray,
    b: np.ndarray | None = None,
    ft: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> np.ndarray:
    """NumPy float64 twin of :func:`frames`, returning ``(n, npix)``."""
    acc = np.asarray(Ct, np.float64) @ A.toarray().T.astype(np.float64)
    if b is not None and ft is not None:
        acc = acc + np.asarray(ft, np.float64) @ np.asarray(b, np.float64).T
    if Y is None:
        return acc
    return np.asarray(Y, np.float64).reshape(len(acc), -1) - acc
