"""Exact per-pixel projections over time of a factored movie ``M = A · C``.

A CNMF model writes the reconstructed movie as ``M = A · C`` (``P × T``) with a
sparse non-negative spatial factor ``A`` (``P × K``) and a trace matrix ``C``
(``K × T``), and the background as ``b · f`` with a small dense factor ``b``
(``P × nb``). ``P · T`` can be hundreds of gigabytes, so this module computes
per-pixel summaries over a time window -- mean, population standard deviation,
minimum, maximum and covariances between neighbouring pixels -- *exactly*
(up to floating point rounding) without ever forming ``M``.

Pixel ``p`` (a row of ``A``) has the trace ``x_p(t) = Σ_k A[p, k] C[k, t]`` and
the support set ``S_p = {k : A[p, k] ≠ 0}``. Pixels are grouped by their support
set (:func:`footprint_groups`):

* ``|S_p| = 0``: the trace is identically zero.
* ``|S_p| = 1``: ``x_p = a · C_k``, so every statistic follows from the
  statistics of one trace (``max = a·max C_k`` if ``a > 0``, ``a·min C_k`` if
  ``a < 0``, ``std = |a|·std C_k``...).
* ``|S_p| ≥ 2`` (overlap pixels): mean and variance follow from the window mean
  ``μ`` and covariance ``Σ`` of the traces (``var_p = a_p Σ_S a_pᵀ`` on the
  ``|S|×|S|`` block of the support set). Minimum and maximum are not functions
  of low-order moments, so they are computed by an exact pass over the rows
  ``C[S, :]`` only. For large groups with a small support set (typically the
  dense background factor ``b`` with ``nb ≤ 4``) the pass is restricted to the
  time points near the boundary of the convex hull of ``{C[S, t]}_t`` -- the
  maximum of a linear function over a point set is attained at a vertex of its
  convex hull, and the candidate set is padded by a tolerance so that points
  Qhull rounds away are kept, which keeps the result exact.

Row ``p`` of ``A`` is the pixel at C-order (row-major) position ``p`` of
``dims``: pixel ``(i, j)`` of a ``(d1, d2)`` frame is row ``i*d2 + j``.

Every function accepts the spatial factor either as a SciPy sparse matrix/array
(or any object with a ``tocsr()`` method) or as a dense 2D NumPy array, and the
traces as a 2D array. All arithmetic is float64. Time windows are
``C[:, t0:t1]`` with ``0 ≤ t0 < t1 ≤ T``; an empty window, like any argument
that does not fit the factors, raises :class:`~caiman_dask.ShapeMismatchError`
(a ``ValueError``). Traces must be finite (NaN handling is undefined).

Plain NumPy/SciPy/numba, no dask.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.spatial import ConvexHull, QhullError

from .errors import ShapeMismatchError

__all__ = [
    "FootprintGroups",
    "footprint_groups",
    "structured_cov_pairs",
    "structured_mean",
    "structured_min_max",
    "structured_std",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Time points handled per block in the min/max kernel (bounds the per-pixel buffer).
_TIME_BLOCK = 1024
#: Convex-hull pruning of the min/max pass is tried for groups whose support
#: set has between 2 and ``_HULL_MAX_DIM`` components ...
_HULL_MAX_DIM = 4
#: ... that contain at least this many pixels ...
_HULL_MIN_PIXELS = 256
#: ... over windows of at least this many frames.
_HULL_MIN_FRAMES = 64
#: Padding (in units of the largest centred coordinate) of the hull candidate set.
_HULL_TOL = 1e-9
#: Elements per temporary in the blocked covariance, quadratic-form and hull code.
_PAIR_BLOCK_ELEMS = 1 << 18


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------


def _as_csr(A: Any) -> sp.csr_matrix:
    """Return a float64 CSR copy of ``A`` with sorted indices and no stored zeros.

    Parameters
    ----------
    A : scipy.sparse matrix or array, object with ``tocsr()``, or 2D array-like
        Spatial factor, ``P × K``.

    Returns
    -------
    scipy.sparse.csr_matrix
        Canonical float64 copy (the caller's object is never modified).

    Raises
    ------
    ShapeMismatchError
        If a dense ``A`` is not two-dimensional.
    """
    if sp.issparse(A):
        csr = sp.csr_matrix(A, dtype=np.float64, copy=True)
    elif hasattr(A, "tocsr") and not isinstance(A, np.ndarray):
        csr = sp.csr_matrix(A.tocsr(), dtype=np.float64, copy=True)
    else:
        dense = np.asarray(A, dtype=np.float64)
        if dense.ndim != 2:
            raise ShapeMismatchError(
                f"the spatial factor must be 2D (pixels × components), got shape {dense.shape}"
            )
        csr = sp.csr_matrix(dense)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def _window(C: Any, n_components: int, t0: int, t1: int | None) -> FloatArray:
    """Validate the traces and return the window ``C[:, t0:t1]`` as C-contiguous float64.

    Parameters
    ----------
    C : array-like, shape (K, T)
        Temporal factor.
    n_components : int
        ``K`` of the spatial factor, which ``C`` must match.
    t0, t1 : int, int or None
        Window bounds (``t1=None`` means ``T``).

    Returns
    -------
    numpy.ndarray, shape (K, t1 - t0)

    Raises
    ------
    ShapeMismatchError
        If ``C`` is not 2D, its row count differs from ``K``, the bounds are out of
        ``[0, T]`` or the window is empty (``t1 <= t0``).
    """
    shape = np.shape(C)
    if len(shape) != 2:
        raise ShapeMismatchError(
            f"the temporal factor must be 2D (components × frames), got shape {shape}"
        )
    if shape[0] != n_components:
        raise ShapeMismatchError(
            f"the temporal factor has {shape[0]} rows but the spatial factor has "
            f"{n_components} columns; they must be equal"
        )
    n_frames = int(shape[1])
    start = operator.index(t0)
    stop = n_frames if t1 is None else operator.index(t1)
    if stop <= start:
        raise ShapeMismatchError(
            f"empty time window: t0={start}, t1={stop} "
            f"(need t0 < t1; the movie has {n_frames} frames)"
        )
    if start < 0 or stop > n_frames:
        raise ShapeMismatchError(
            f"time window [{start}, {stop}) is outside the movie's frames [0, {n_frames})"
        )
    return np.ascontiguousarray(np.asarray(C)[:, start:stop], dtype=np.float64)


def _as_dims(dims: Any, n_pixels: int) -> tuple[int, ...]:
    """Validate ``dims`` against the pixel count and return it as a tuple of ints."""
    out = tuple(operator.index(d) for d in dims)
    if not out or any(d <= 0 for d in out):
        raise ShapeMismatchError(
            f"dims must be a non-empty tuple of positive integers, got {dims!r}"
        )
    if int(np.prod(out)) != n_pixels:
        raise ShapeMismatchError(
            f"dims {out} hold {int(np.prod(out))} pixels but the spatial factor has {n_pixels} rows"
        )
    return out


# --------------------------------------------------------------------------
# grouping by support set
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FootprintGroups:
    """Pixels of a spatial factor grouped by their support set ``S_p = {k : A[p, k] ≠ 0}``.

    Attributes
    ----------
    n_pixels : int
        ``P``, the number of rows of the factor.
    n_components : int
        ``K``, the number of columns of the factor.
    empty : numpy.ndarray of int64
        Rows with ``|S_p| = 0`` (ascending).
    single_pixels : numpy.ndarray of int64
        Rows with ``|S_p| = 1`` (ascending).
    single_component : numpy.ndarray of int64
        For each row of ``single_pixels`` its only component ``k``.
    single_weight : numpy.ndarray of float64
        For each row of ``single_pixels`` its non-zero weight ``A[p, k]``.
    supports : tuple of numpy.ndarray of int64
        One entry per group of rows with ``|S_p| ≥ 2``: the support set, ascending.
        All support sets are distinct.
    pixels : tuple of numpy.ndarray of int64
        The rows of each group (ascending), aligned with ``supports``.
    weights : tuple of numpy.ndarray of float64
        ``A[pixels[g]][:, supports[g]]`` for each group, shape ``(n_pix, |S|)``.
    """

    n_pixels: int
    n_components: int
    empty: IntArray
    single_pixels: IntArray
    single_component: IntArray
    single_weight: FloatArray
    supports: tuple[IntArray, ...]
    pixels: tuple[IntArray, ...]
    weights: tuple[FloatArray, ...]

    @property
    def n_groups(self) -> int:
        """Number of groups of overlap pixels (``|S_p| ≥ 2``)."""
        return len(self.supports)

    @property
    def n_overlap_pixels(self) -> int:
        """Number of pixels with ``|S_p| ≥ 2``."""
        return int(sum(p.size for p in self.pixels))


def footprint_groups(A: Any) -> FootprintGroups:
    """Group the pixels (rows) of a spatial factor by their support set.

    Parameters
    ----------
    A : scipy.sparse matrix/array (CSR, CSC, ...) or numpy.ndarray, shape (P, K)
        Spatial factor. Explicitly stored zeros are ignored.

    Returns
    -------
    FootprintGroups
        Empty pixels, single-footprint pixels (with their component and weight),
        and the groups of pixels sharing the same support set of size ≥ 2 (with
        their weight matrices).
    """
    return _groups_from_csr(_as_csr(A))


def _unique_rows(idx: IntArray, n_components: int) -> tuple[IntArray, IntArray]:
    """Distinct rows of a 2D array of component indices and the inverse map.

    Rows are encoded as base-``K`` integers when that fits in int64 (fast 1D
    ``np.unique``), otherwise ``np.unique(axis=0)`` is used. Distinct rows come
    out in lexicographic order either way.
    """
    m = idx.shape[1]
    base = max(int(n_components), 2)
    if m * np.log2(base) < 62:
        keys = np.zeros(idx.shape[0], dtype=np.int64)
        for j in range(m):
            keys = keys * base + idx[:, j]
        ukeys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        del ukeys
        return idx[first], np.asarray(inverse, dtype=np.int64).reshape(-1)
    uniq, inverse = np.unique(idx, axis=0, return_inverse=True)
    return uniq, np.asarray(inverse, dtype=np.int64).reshape(-1)


def _groups_from_csr(csr: sp.csr_matrix) -> FootprintGroups:
    """Build :class:`FootprintGroups` from a canonical CSR matrix (see :func:`_as_csr`)."""
    n_pixels, n_components = csr.shape
    indptr = csr.indptr.astype(np.int64)
    indices = csr.indices.astype(np.int64)
    data = np.asarray(csr.data, dtype=np.float64)
    counts = np.diff(indptr)

    empty = np.flatnonzero(counts == 0).astype(np.int64)
    single = np.flatnonzero(counts == 1).astype(np.int64)
    single_component = indices[indptr[single]]
    single_weight = data[indptr[single]]

    supports: list[IntArray] = []
    pixels: list[IntArray] = []
    weights: list[FloatArray] = []
    for m in np.unique(counts[counts >= 2]):
        rows = np.flatnonzero(counts == m).astype(np.int64)
        pos = indptr[rows][:, None] + np.arange(m, dtype=np.int64)
        idx = indices[pos]
        wts = data[pos]
        uniq, inverse = _unique_rows(idx, n_components)
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=len(uniq)))))
        for g in range(len(uniq)):
            sel = order[bounds[g] : bounds[g + 1]]
            supports.append(np.ascontiguousarray(uniq[g], dtype=np.int64))
            pixels.append(rows[sel])
            weights.append(np.ascontiguousarray(wts[sel]))
    return FootprintGroups(
        n_pixels=int(n_pixels),
        n_components=int(n_components),
        empty=empty,
        single_pixels=single,
        single_component=single_component,
        single_weight=single_weight,
        supports=tuple(supports),
        pixels=tuple(pixels),
        weights=tuple(weights),
    )


@dataclass(frozen=True)
class _Packed:
    """Flat arrays describing the overlap groups, in the layout the kernels read.

    Overlap pixels are listed group after group (``rows``); pixel ``i`` belongs to
    group ``pix_group[i]`` whose support set is ``sup_idx[sup_ptr[g]:sup_ptr[g+1]]``
    and its weights are ``w[wptr[i] : wptr[i] + |S|]``.
    """

    rows: IntArray
    pix_group: IntArray
    wptr: IntArray
    w: FloatArray
    sup_ptr: IntArray
    sup_idx: IntArray


def _pack(groups: FootprintGroups) -> _Packed:
    """Flatten the overlap groups of ``groups`` for the numba kernels."""
    n_groups = groups.n_groups
    if n_groups == 0:
        z = np.zeros(0, dtype=np.int64)
        return _Packed(z, z, z, np.zeros(0), np.zeros(1, dtype=np.int64), z)
    sizes = np.array([p.size for p in groups.pixels], dtype=np.int64)
    dims = np.array([s.size for s in groups.supports], dtype=np.int64)
    per_pixel = np.repeat(dims, sizes)
    wptr = np.concatenate(([0], np.cumsum(per_pixel)[:-1])).astype(np.int64)
    return _Packed(
        rows=np.concatenate(groups.pixels).astype(np.int64),
        pix_group=np.repeat(np.arange(n_groups, dtype=np.int64), sizes),
        wptr=wptr,
        w=np.concatenate([w.reshape(-1) for w in groups.weights]).astype(np.float64),
        sup_ptr=np.concatenate(([0], np.cumsum(dims))).astype(np.int64),
        sup_idx=np.concatenate(groups.supports).astype(np.int64),
    )


def _resolve(A: Any, groups: FootprintGroups | None) -> tuple[sp.csr_matrix, FootprintGroups]:
    """Return the canonical CSR factor and its groups (computed unless given)."""
    csr = _as_csr(A)
    if groups is None:
        groups = _groups_from_csr(csr)
    elif (groups.n_pixels, groups.n_components) != csr.shape:
        raise ShapeMismatchError(
            f"groups were computed for a {groups.n_pixels}×{groups.n_components} factor, "
            f"not for this {csr.shape[0]}×{csr.shape[1]} one"
        )
    return csr, groups


# --------------------------------------------------------------------------
# covariances
# --------------------------------------------------------------------------


def _pair_cov(X: FloatArray, mu: FloatArray, pk: IntArray, pl: IntArray) -> FloatArray:
    """Population covariance of the rows ``pk[i]`` and ``pl[i]`` of ``X``.

    Rows are centred by ``mu`` before multiplying (two-pass, numerically stable);
    sums use NumPy's pairwise summation. Pairs are processed in blocks so that
    temporaries stay below ``_PAIR_BLOCK_ELEMS`` elements each.

    Parameters
    ----------
    X : numpy.ndarray, shape (K, n)
        Window of the traces, float64.
    mu : numpy.ndarray, shape (K,)
        Row means of ``X``.
    pk, pl : numpy.ndarray of int64, shape (n_pairs,)
        Row pairs.

    Returns
    -------
    numpy.ndarray of float64, shape (n_pairs,)
    """
    n = X.shape[1]
    out = np.empty(pk.size)
    step = max(1, _PAIR_BLOCK_ELEMS // max(n, 1))
    for s0 in range(0, pk.size, step):
        k = pk[s0 : s0 + step]
        l = pl[s0 : s0 + step]  # noqa: E741
        xk = X[k] - mu[k, None]
        xk *= X[l] - mu[l, None]
        out[s0 : s0 + step] = xk.sum(axis=1) / n
    return out


def _overlap_var(
    groups: FootprintGroups, X: FloatArray, mu: FloatArray
) -> tuple[IntArray, FloatArray]:
    """``a_p Σ_S a_pᵀ`` for every overlap pixel, with ``Σ_S`` the covariance block of ``S_p``.

    Groups are processed together per support size ``d``: the ``d×d`` blocks of all
    groups of that size are computed at once, then the quadratic forms.

    Returns
    -------
    rows : numpy.ndarray of int64
        Overlap pixel rows.
    var : numpy.ndarray of float64
        Their variances (not clipped).
    """
    sizes = np.array([s.size for s in groups.supports], dtype=np.int64)
    rows_out: list[IntArray] = []
    var_out: list[FloatArray] = []
    for d in np.unique(sizes):
        sel = np.flatnonzero(sizes == d)
        sup = np.stack([groups.supports[g] for g in sel])  # (G, d)
        iu, ju = np.triu_indices(int(d))
        vals = _pair_cov(X, mu, sup[:, iu].reshape(-1), sup[:, ju].reshape(-1))
        blocks = np.empty((sel.size, d, d))
        blocks[:, iu, ju] = vals.reshape(sel.size, iu.size)
        blocks[:, ju, iu] = blocks[:, iu, ju]
        n_pix = np.array([groups.pixels[g].size for g in sel], dtype=np.int64)
        owner = np.repeat(np.arange(sel.size), n_pix)
        W = np.concatenate([groups.weights[g] for g in sel])  # (n, d)
        step = max(1, _PAIR_BLOCK_ELEMS // int(d * d))
        var = np.empty(W.shape[0])
        for p0 in range(0, W.shape[0], step):
            w = W[p0 : p0 + step]
            var[p0 : p0 + step] = np.einsum("ij,ijk,ik->i", w, blocks[owner[p0 : p0 + step]], w)
        rows_out.append(np.concatenate([groups.pixels[g] for g in sel]))
        var_out.append(var)
    return np.concatenate(rows_out), np.concatenate(var_out)


# --------------------------------------------------------------------------
# minimum / maximum
# --------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def _min_max_kernel(
    pix_group: IntArray,
    wptr: IntArray,
    w: FloatArray,
    sup_ptr: IntArray,
    sup_idx: IntArray,
    X: FloatArray,
    block: int,
) -> tuple[FloatArray, FloatArray]:  # pragma: no cover - compiled
    """Exact min and max over the columns of ``X`` of ``Σ_j w_j X[S_j, t]`` for every pixel.

    Support sets of size 2, 3 and 4 use fused loops, larger ones a block buffer
    (allocated once per chunk of pixels). The sum is accumulated in the order of
    ``S`` starting from the first term, like a CSR mat-vec product.
    """
    npx = pix_group.shape[0]
    n = X.shape[1]
    mn = np.empty(npx)
    mx = np.empty(npx)
    chunk = 256
    n_chunks = (npx + chunk - 1) // chunk
    for ci in numba.prange(n_chunks):
        buf = np.empty(min(block, n))
        for i in range(ci * chunk, min(npx, (ci + 1) * chunk)):
            g = pix_group[i]
            s0 = sup_ptr[g]
            d = sup_ptr[g + 1] - s0
            w0 = wptr[i]
            lo = np.inf
            hi = -np.inf
            if d == 2:
                a0 = w[w0]
                a1 = w[w0 + 1]
                r0 = X[sup_idx[s0]]
                r1 = X[sup_idx[s0 + 1]]
                for t in range(n):
                    v = a0 * r0[t] + a1 * r1[t]
                    lo = min(lo, v)
                    hi = max(hi, v)
            elif d == 3:
                a0 = w[w0]
                a1 = w[w0 + 1]
                a2 = w[w0 + 2]
                r0 = X[sup_idx[s0]]
                r1 = X[sup_idx[s0 + 1]]
                r2 = X[sup_idx[s0 + 2]]
                for t in range(n):
                    v = a0 * r0[t] + a1 * r1[t] + a2 * r2[t]
                    lo = min(lo, v)
                    hi = max(hi, v)
            elif d == 4:
                a0 = w[w0]
                a1 = w[w0 + 1]
                a2 = w[w0 + 2]
                a3 = w[w0 + 3]
                r0 = X[sup_idx[s0]]
                r1 = X[sup_idx[s0 + 1]]
                r2 = X[sup_idx[s0 + 2]]
                r3 = X[sup_idx[s0 + 3]]
                for t in range(n):
                    v = a0 * r0[t] + a1 * r1[t] + a2 * r2[t] + a3 * r3[t]
                    lo = min(lo, v)
                    hi = max(hi, v)
            else:
                for b0 in range(0, n, block):
                    m = min(block, n - b0)
                    a = w[w0]
                    r = X[sup_idx[s0]]
                    for t in range(m):
                        buf[t] = a * r[b0 + t]
                    for j in range(1, d):
                        a = w[w0 + j]
                        r = X[sup_idx[s0 + j]]
                        for t in range(m):
                            buf[t] += a * r[b0 + t]
                    for t in range(m):
                        lo = min(lo, buf[t])
                        hi = max(hi, buf[t])
            mn[i] = lo
            mx[i] = hi
    return mn, mx


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------


def structured_mean(
    A: Any,
    C: Any,
    t0: int = 0,
    t1: int | None = None,
    *,
    groups: FootprintGroups | None = None,
) -> FloatArray:
    """Per-pixel mean over time of ``M = A · C`` on the window ``[t0, t1)``.

    Parameters
    ----------
    A : scipy.sparse matrix/array or numpy.ndarray, shape (P, K)
        Spatial factor (sparse footprints ``A`` or dense background ``b``).
    C : array-like, shape (K, T)
        Temporal factor (may be negative).
    t0 : int, default 0
        First frame of the window.
    t1 : int or None, default None
        One past the last frame (``None``: ``T``).
    groups : FootprintGroups, optional
        Accepted for a uniform signature; not needed for the mean.

    Returns
    -------
    numpy.ndarray of float64, shape (P,)
        ``A · mean(C[:, t0:t1], axis=1)``.

    Raises
    ------
    ShapeMismatchError
        On shape mismatch or an empty / out-of-range window.
    """
    del groups
    csr = _as_csr(A)
    X = _window(C, csr.shape[1], t0, t1)
    mu = X.mean(axis=1)
    return np.asarray(csr @ mu, dtype=np.float64).reshape(csr.shape[0])


def structured_std(
    A: Any,
    C: Any,
    t0: int = 0,
    t1: int | None = None,
    *,
    groups: FootprintGroups | None = None,
) -> FloatArray:
    """Per-pixel population standard deviation (``ddof=0``) over time of ``M = A · C``.

    ``var_p = a_p Σ a_pᵀ`` with ``Σ`` the population covariance of the window of
    ``C`` (computed from centred traces in float64). Single-footprint pixels use
    ``a² var_k``; overlap pixels use the ``|S_p|×|S_p|`` block of ``Σ``. Tiny
    negative variances from rounding are clipped to 0.

    Parameters
    ----------
    A : scipy.sparse matrix/array or numpy.ndarray, shape (P, K)
        Spatial factor.
    C : array-like, shape (K, T)
        Temporal factor.
    t0 : int, default 0
        First frame of the window.
    t1 : int or None, default None
        One past the last frame (``None``: ``T``).
    groups : FootprintGroups, optional
        Precomputed :func:`footprint_groups` of ``A`` (reuse across windows).

    Returns
    -------
    numpy.ndarray of float64, shape (P,)

    Raises
    ------
    ShapeMismatchError
        On shape mismatch or an empty / out-of-range window.
    """
    csr, groups = _resolve(A, groups)
    X = _window(C, csr.shape[1], t0, t1)
    var = np.zeros(csr.shape[0])
    if csr.shape[1] == 0:
        return var
    mu = X.mean(axis=1)
    if groups.single_pixels.size:
        comps = np.unique(groups.single_component)
        var_k = np.zeros(csr.shape[1])
        var_k[comps] = _pair_cov(X, mu, comps, comps)
        var[groups.single_pixels] = groups.single_weight**2 * var_k[groups.single_component]
    if groups.n_groups:
        rows, var_multi = _overlap_var(groups, X, mu)
        var[rows] = var_multi
    np.maximum(var, 0.0, out=var)
    return np.sqrt(var)


def _hull_candidates(Y: FloatArray) -> IntArray | None:
    """Time points that can be extreme for some linear functional of the columns of ``Y``.

    Parameters
    ----------
    Y : numpy.ndarray, shape (d, n)
        ``C[S, window]`` for one support set, ``2 ≤ d``.

    Returns
    -------
    numpy.ndarray of int64 or None
        Sorted indices ``t`` whose point ``Y[:, t]`` lies outside or within
        ``_HULL_TOL`` (relative) of the boundary of the Qhull convex hull -- a
        superset of the true hull vertices, so ``max_t w·Y[:, t]`` over them equals
        the maximum over all ``t`` for every ``w``. ``None`` when Qhull fails
        (degenerate, e.g. collinear points) or pruning would not pay.
    """
    d, n = Y.shape
    pts = Y.T - Y.mean(axis=1)
    scale = float(np.max(np.abs(pts))) if pts.size else 0.0
    if scale == 0.0:
        return np.zeros(1, dtype=np.int64)  # all points identical
    pts = pts / scale
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return None
    eq = hull.equations
    best = np.full(n, -np.inf)
    step = max(1, _PAIR_BLOCK_ELEMS // n)
    for f0 in range(0, eq.shape[0], step):
        e = eq[f0 : f0 + step]
        np.maximum(best, (pts @ e[:, :d].T + e[:, d]).max(axis=1), out=best)
    keep = best >= -_HULL_TOL
    keep[hull.vertices] = True
    cand = np.flatnonzero(keep).astype(np.int64)
    if 4 * cand.size > n:
        return None
    return cand


def _overlap_min_max(
    groups: FootprintGroups, X: FloatArray, lo: FloatArray, hi: FloatArray
) -> None:
    """Fill ``lo``/``hi`` at the overlap pixels of ``groups`` (exact pass over ``X[S]``).

    Large groups with a small support set are evaluated on their convex-hull
    candidate time points only (one kernel call per such group, on the gathered
    columns); all other groups go through a single kernel call over the window.
    """
    n_frames = X.shape[1]
    hull_groups: dict[int, IntArray] = {}
    if n_frames >= _HULL_MIN_FRAMES:
        for g, (sup, pix) in enumerate(zip(groups.supports, groups.pixels, strict=True)):
            if pix.size >= _HULL_MIN_PIXELS and sup.size <= _HULL_MAX_DIM:
                cand = _hull_candidates(X[sup])
                if cand is not None:
                    hull_groups[g] = cand
    for g, cand in hull_groups.items():
        sup = groups.supports[g]
        w = groups.weights[g]
        mn, mx = _min_max_kernel(
            np.zeros(w.shape[0], dtype=np.int64),
            np.arange(0, w.size, sup.size, dtype=np.int64),
            np.ascontiguousarray(w.reshape(-1)),
            np.array([0, sup.size], dtype=np.int64),
            np.arange(sup.size, dtype=np.int64),
            np.ascontiguousarray(X[sup][:, cand]),
            _TIME_BLOCK,
        )
        lo[groups.pixels[g]] = mn
        hi[groups.pixels[g]] = mx
    if len(hull_groups) == groups.n_groups:
        return
    rest = [g for g in range(groups.n_groups) if g not in hull_groups]
    sub = FootprintGroups(
        n_pixels=groups.n_pixels,
        n_components=groups.n_components,
        empty=groups.empty,
        single_pixels=groups.single_pixels,
        single_component=groups.single_component,
        single_weight=groups.single_weight,
        supports=tuple(groups.supports[g] for g in rest),
        pixels=tuple(groups.pixels[g] for g in rest),
        weights=tuple(groups.weights[g] for g in rest),
    )
    packed = _pack(sub)
    mn, mx = _min_max_kernel(
        packed.pix_group, packed.wptr, packed.w, packed.sup_ptr, packed.sup_idx, X, _TIME_BLOCK
    )
    lo[packed.rows] = mn
    hi[packed.rows] = mx


def structured_min_max(
    A: Any,
    C: Any,
    t0: int = 0,
    t1: int | None = None,
    *,
    groups: FootprintGroups | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Exact per-pixel minimum and maximum over time of ``M = A · C``.

    Single-footprint pixels: ``a·max C_k`` / ``a·min C_k`` (swapped when ``a < 0``).
    Overlap pixels: an exact numba pass over the rows ``C[S_p, t0:t1]`` of their
    support set (no ``P × T`` temporary; memory ``O(P + K·T)``); large groups with
    ``|S| ≤ 4`` (e.g. a dense background ``b``) only visit the time points near the
    convex hull of ``{C[S, t]}``. Zero-footprint pixels give 0.

    Parameters
    ----------
    A : scipy.sparse matrix/array or numpy.ndarray, shape (P, K)
        Spatial factor (any sign allowed).
    C : array-like, shape (K, T)
        Temporal factor.
    t0 : int, default 0
        First frame of the window.
    t1 : int or None, default None
        One past the last frame (``None``: ``T``).
    groups : FootprintGroups, optional
        Precomputed :func:`footprint_groups` of ``A`` (reuse across windows).

    Returns
    -------
    minimum, maximum : numpy.ndarray of float64, shape (P,)

    Raises
    ------
    ShapeMismatchError
        On shape mismatch or an empty / out-of-range window.
    """
    csr, groups = _resolve(A, groups)
    X = _window(C, csr.shape[1], t0, t1)
    n_pixels = csr.shape[0]
    lo = np.zeros(n_pixels)
    hi = np.zeros(n_pixels)
    if csr.shape[1] == 0:
        return lo, hi
    if groups.single_pixels.size:
        k = groups.single_component
        a = groups.single_weight
        k_max = X.max(axis=1)[k]
        k_min = X.min(axis=1)[k]
        pos = a > 0
        hi[groups.single_pixels] = np.where(pos, a * k_max, a * k_min)
        lo[groups.single_pixels] = np.where(pos, a * k_min, a * k_max)
    if groups.n_groups:
        _overlap_min_max(groups, X, lo, hi)
    return lo, hi


def _offset_rows(dims: tuple[int, ...], offset: tuple[int, ...]) -> tuple[IntArray, IntArray]:
    """Flat rows ``x`` and ``x + offset`` for every ``x`` with both inside the frame."""
    src: list[slice] = []
    dst: list[slice] = []
    for d, o in zip(dims, offset, strict=True):
        lo = max(0, -o)
        hi = d - max(0, o)
        if hi <= lo:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        src.append(slice(lo, hi))
        dst.append(slice(lo + o, hi + o))
    idx = np.arange(int(np.prod(dims)), dtype=np.int64).reshape(dims)
    return idx[tuple(src)].reshape(-1), idx[tuple(dst)].reshape(-1)


def structured_cov_pairs(
    A: Any,
    C: Any,
    dims: Sequence[int],
    offsets: Sequence[Sequence[int]],
    t0: int = 0,
    t1: int | None = None,
) -> dict[tuple[int, ...], FloatArray]:
    """Exact population covariance over time between each pixel and its neighbour.

    For pixels ``p = x`` and ``q = x + offset``: ``cov(p, q) = a_p Σ a_qᵀ`` with
    ``Σ`` the population covariance (``ddof=0``) of ``C[:, t0:t1]``. Only the entries
    ``Σ_kl`` with ``k ∈ S_p``, ``l ∈ S_q`` for some neighbour pair are computed, and
    the products are sparse (``((A_x Σ) ⊙ A_q)·1``).

    Parameters
    ----------
    A : scipy.sparse matrix/array or numpy.ndarray, shape (P, K)
        Spatial factor, rows in C order of ``dims``.
    C : array-like, shape (K, T)
        Temporal factor.
    dims : sequence of int
        Frame shape, ``prod(dims) == P`` (2D or 3D).
    offsets : sequence of tuples of int
        Neighbour offsets, each with ``len(dims)`` entries, e.g. ``(1, 0)``,
        ``(0, 1)``, ``(1, -1)``. ``(0, ..., 0)`` gives the variance.
    t0 : int, default 0
        First frame of the window.
    t1 : int or None, default None
        One past the last frame (``None``: ``T``).

    Returns
    -------
    dict
        ``{offset (tuple of int): numpy.ndarray of float64, shape dims}``; entry ``x``
        holds ``cov(x, x + offset)`` and is NaN where ``x + offset`` leaves the frame.

    Raises
    ------
    ShapeMismatchError
        On bad ``dims``/``offsets``, shape mismatch or an empty / out-of-range window.
    """
    csr = _as_csr(A)
    n_pixels, n_components = csr.shape
    shape = _as_dims(dims, n_pixels)
    X = _window(C, n_components, t0, t1)
    offs: list[tuple[int, ...]] = []
    for off in offsets:
        o = tuple(operator.index(v) for v in off)
        if len(o) != len(shape):
            raise ShapeMismatchError(
                f"offset {off!r} has {len(o)} entries but dims {shape} has {len(shape)}"
            )
        offs.append(o)

    rows = {o: _offset_rows(shape, o) for o in offs}
    out: dict[tuple[int, ...], FloatArray] = {}
    if n_components == 0 or csr.nnz == 0:
        for o, (xs, _) in rows.items():
            res = np.full(shape, np.nan)
            res.reshape(-1)[xs] = 0.0
            out[o] = res
        return out

    pattern = csr.copy()
    pattern.data = np.ones_like(pattern.data)
    keys: list[IntArray] = []
    for xs, qs in rows.values():
        if xs.size == 0:
            continue
        pair = (pattern[xs].T @ pattern[qs]).tocoo()
        k = np.minimum(pair.row, pair.col).astype(np.int64)
        l = np.maximum(pair.row, pair.col).astype(np.int64)  # noqa: E741
        keys.append(k * n_components + l)
    uniq = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    pk = uniq // n_components
    pl = uniq % n_components
    mu = X.mean(axis=1)
    vals = _pair_cov(X, mu, pk, pl)
    off_diag = pk != pl
    sigma = sp.csr_matrix(
        (
            np.concatenate((vals, vals[off_diag])),
            (np.concatenate((pk, pl[off_diag])), np.concatenate((pl, pk[off_diag]))),
        ),
        shape=(n_components, n_components),
    )

    for o, (xs, qs) in rows.items():
        res = np.full(shape, np.nan)
        if xs.size:
            ax = csr[xs]
            aq = csr[qs]
            cov = np.asarray((ax @ sigma).multiply(aq).sum(axis=1), dtype=np.float64).reshape(-1)
            res.reshape(-1)[xs] = cov
        out[o] = res
    return out
