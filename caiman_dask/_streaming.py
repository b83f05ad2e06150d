"""One-pass, mergeable per-pixel statistics of a movie, including CaImAn's correlation image.

A movie ``(T, *dims)`` is consumed as time blocks ``(n, *dims)``. Each block is reduced by
:func:`block_stats` to a small dictionary of float64 arrays shaped like one frame; dictionaries
of consecutive (or arbitrary) blocks are combined with :func:`merge_stats` / :func:`merge_many`
and turned into images with :func:`finalize`. This is the chunk / combine / aggregate pattern of
a tree reduction; nothing here depends on dask.

Numerics
--------
Every block is centred on its own float64 mean (two passes over the block, the second one from
cache), so values with a large offset (e.g. ~1500 with a standard deviation of ~5) do not lose
precision to cancellation. Blocks are merged with the exact pairwise update of Chan, Golub &
LeVeque (1979)::

    n     = na + nb
    delta = mean_b - mean_a
    mean  = mean_a + delta * nb / n
    M2    = M2_a + M2_b + delta**2 * na * nb / n
    C_pq  = C_pq_a + C_pq_b + delta_p * delta_q * na * nb / n

where ``C_pq = sum_t (x_p - mean_p)(x_q - mean_q)`` is the co-moment of pixel ``p`` with its
neighbour ``q = p + offset``. The merge is associative up to rounding.

A pixel whose values are all identical (``min == max``) gets a mean equal to that value and an
``M2`` of exactly 0, so its standard deviation is exactly 0 and CaImAn's NaN pattern in the
correlation image is reproduced exactly.

Statistics dictionary (the output of :func:`block_stats` and :func:`merge_stats`)
-----------------------------------------------------------------------------------
``"n"``
    ``int``, number of frames.
``"mean"``, ``"m2"``, ``"min"``, ``"max"``
    float64 arrays shaped ``dims``: mean, sum of squared deviations from the mean, minimum and
    maximum over time. For ``n == 0``: mean and m2 are 0, min is ``+inf`` and max is ``-inf``.
``"comoment"`` (only with ``corr=True``)
    float64 array ``(K, *dims)``; ``comoment[k][x] = sum_t (v_x - mean_x)(v_y - mean_y)`` with
    ``y = x + corr_offsets(len(dims))[k]``, and exactly 0 where ``y`` falls outside the frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numba
import numpy as np

from caiman_dask.errors import OptionError, ShapeMismatchError

__all__ = [
    "CORR_OFFSETS_2D",
    "CORR_OFFSETS_3D",
    "FINALIZE_KINDS",
    "block_stats",
    "caiman_corr_from_pairs",
    "corr_offsets",
    "finalize",
    "local_correlations_reference",
    "merge_many",
    "merge_stats",
    "stats_to_c_order",
]

#: Neighbour offsets whose co-moments are accumulated for 2D frames ``(d1, d2)``.
#: ``(1, -1)`` at ``x = (i, j)`` is the pair ``((i, j), (i + 1, j - 1))``.
CORR_OFFSETS_2D: tuple[tuple[int, int], ...] = ((1, 0), (0, 1), (1, 1), (1, -1))
#: Neighbour offsets (the three faces) for 3D frames ``(d1, d2, d3)``.
CORR_OFFSETS_3D: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
#: Valid ``kinds`` of :func:`finalize`.
FINALIZE_KINDS: frozenset[str] = frozenset({"mean", "std", "min", "max", "corr"})

# Bytes of one block tile (all frames of a few rows of pixels) processed at a time; small enough
# to stay in a per-core L2 cache so that the second (centring) pass does not re-read memory.
_TILE_BYTES = 1024 * 1024

Stats = dict[str, Any]


def corr_offsets(ndim: int) -> tuple[tuple[int, ...], ...]:
    """Neighbour offsets used for the correlation image of ``ndim``-dimensional frames.

    Parameters
    ----------
    ndim : int
        Number of frame dimensions (2 or 3).

    Returns
    -------
    tuple of tuple of int
        :data:`CORR_OFFSETS_2D` or :data:`CORR_OFFSETS_3D`; the order is the order of the
        ``"comoment"`` axis in a statistics dictionary.

    Raises
    ------
    ShapeMismatchError
        If ``ndim`` is not 2 or 3 (CaImAn's correlation image is defined for 2D and 3D frames).
    """
    if ndim == 2:
        return CORR_OFFSETS_2D
    if ndim == 3:
        return CORR_OFFSETS_3D
    raise ShapeMismatchError(
        f"the correlation image needs 2D or 3D frames, got frames with ndim={ndim}; "
        "pass a movie shaped (T, d1, d2) or (T, d1, d2, d3), or use corr=False"
    )


def _pair_slices(
    offset: Sequence[int], dims: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(sx, sy)``: ``arr[sy]`` holds the values at ``x + offset`` of ``arr[sx]``."""
    sx: list[slice] = []
    sy: list[slice] = []
    for o, d in zip(offset, dims, strict=True):
        if o >= 0:
            sx.append(slice(0, max(d - o, 0)))
            sy.append(slice(min(o, d), d))
        else:
            sx.append(slice(min(-o, d), d))
            sy.append(slice(0, max(d + o, 0)))
    return tuple(sx), tuple(sy)


# --------------------------------------------------------------------------------------------
# numba kernels (single-threaded, nogil: dask threads parallelise across blocks)
# --------------------------------------------------------------------------------------------


# Small loop helpers: each one is a single, simple, unit-stride loop, which LLVM vectorises
# (one big loop body touching many arrays defeats its alias analysis).


@numba.njit(cache=True, nogil=True)
def _first_row(
    row: np.ndarray, s: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: int
) -> None:  # pragma: no cover - compiled
    for q in range(w):
        v = row[q]
        s[q] = v
        lo[q] = v
        hi[q] = v


@numba.njit(cache=True, nogil=True)
def _acc_row(
    row: np.ndarray, s: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: int
) -> None:  # pragma: no cover - compiled
    for q in range(w):
        v = row[q]
        s[q] += v
        lo[q] = v if v < lo[q] else lo[q]
        hi[q] = v if v > hi[q] else hi[q]


@numba.njit(cache=True, nogil=True)
def _finish_mean(
    s: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, w: int
) -> None:  # pragma: no cover - compiled
    # s holds the sum on entry and the mean on exit; a constant pixel gets its exact value
    for q in range(w):
        s[q] = lo[q] if lo[q] == hi[q] else s[q] / n


@numba.njit(cache=True, nogil=True)
def _sqdev_row(
    row: np.ndarray, mean: np.ndarray, acc: np.ndarray, w: int
) -> None:  # pragma: no cover - compiled
    for q in range(w):
        d = row[q] - mean[q]
        acc[q] += d * d


@numba.njit(cache=True, nogil=True)
def _centre_row(
    row: np.ndarray, mean: np.ndarray, out: np.ndarray, w: int
) -> None:  # pragma: no cover - compiled
    for q in range(w):
        out[q] = row[q] - mean[q]


@numba.njit(cache=True, nogil=True)
def _pairs2d_row(
    a: np.ndarray,
    b: np.ndarray,
    m2: np.ndarray,
    c01: np.ndarray,
    c10: np.ndarray,
    c11: np.ndarray,
    c1m: np.ndarray,
    w: int,
) -> None:  # pragma: no cover - compiled
    # a: centred row i, b: centred row i + 1 (both length w >= 1); one fused loop
    for q in range(w - 1):
        aq = a[q]
        a1 = a[q + 1]
        m2[q] += aq * aq
        c01[q] += aq * a1
        c10[q] += aq * b[q]
        c11[q] += aq * b[q + 1]
        c1m[q + 1] += a1 * b[q]
    q = w - 1
    m2[q] += a[q] * a[q]
    c10[q] += a[q] * b[q]


@numba.njit(cache=True, nogil=True)
def _pairs2d_last(
    a: np.ndarray, m2: np.ndarray, c01: np.ndarray, w: int
) -> None:  # pragma: no cover - compiled
    # last row of the frame: no downward neighbours
    for q in range(w - 1):
        aq = a[q]
        m2[q] += aq * aq
        c01[q] += aq * a[q + 1]
    q = w - 1
    m2[q] += a[q] * a[q]


@numba.njit(cache=True, nogil=True)
def _pairs3d_row(
    a: np.ndarray,
    b: np.ndarray,
    has_next: bool,
    c010: np.ndarray,
    c100: np.ndarray,
    r: int,
    d3: int,
) -> None:  # pragma: no cover - compiled
    # a: centred plane i, b: centred plane i + 1 (ignored unless has_next), flattened (d2 * d3,)
    for q in range(r - d3):
        c010[q] += a[q] * a[q + d3]
    if has_next:
        for q in range(r):
            c100[q] += a[q] * b[q]


@numba.njit(cache=True, nogil=True)
def _pairs3d_depth(
    a: np.ndarray, c001: np.ndarray, d2: int, d3: int
) -> None:  # pragma: no cover - compiled
    for j in range(d2):
        o = j * d3
        for k in range(d3 - 1):
            c001[o + k] += a[o + k] * a[o + k + 1]


@numba.njit(cache=True, nogil=True)
def _moments_kernel(
    x: np.ndarray, tile: int, mean: np.ndarray, m2: np.ndarray, mn: np.ndarray, mx: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Per-pixel mean / M2 / min / max of a C-contiguous ``(n, P)`` block, tiled over pixels.

    Per tile, pass 1 (sum, min, max) streams the tile from memory and pass 2 (squared
    deviations from the block mean) re-reads it from cache.
    """
    n, npix = x.shape
    s = np.empty(tile, np.float64)
    lo = np.empty(tile, x.dtype)
    hi = np.empty(tile, x.dtype)
    acc = np.empty(tile, np.float64)
    for p0 in range(0, npix, tile):
        w = min(tile, npix - p0)
        _first_row(x[0, p0 : p0 + w], s, lo, hi, w)
        for t in range(1, n):
            _acc_row(x[t, p0 : p0 + w], s, lo, hi, w)
        _finish_mean(s, lo, hi, n, w)
        acc[:w] = 0.0
        for t in range(n):
            _sqdev_row(x[t, p0 : p0 + w], s, acc, w)
        for q in range(w):
            mean[p0 + q] = s[q]
            m2[p0 + q] = acc[q]
            mn[p0 + q] = lo[q]
            mx[p0 + q] = hi[q]


@numba.njit(cache=True, nogil=True)
def _rows_mean(
    x: np.ndarray,
    i0: int,
    i1: int,
    mean: np.ndarray,
    mn: np.ndarray,
    mx: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Pass 1 over rows ``i0:i1`` of a C-contiguous ``(n, d1, R)`` block (lo/hi: scratch)."""
    n = x.shape[0]
    r = x.shape[2]
    for i in range(i0, i1):
        a = i - i0
        _first_row(x[0, i], mean[i], lo[a], hi[a], r)
    for t in range(1, n):
        for i in range(i0, i1):
            a = i - i0
            _acc_row(x[t, i], mean[i], lo[a], hi[a], r)
    for i in range(i0, i1):
        a = i - i0
        _finish_mean(mean[i], lo[a], hi[a], n, r)
        for q in range(r):
            mn[i, q] = lo[a, q]
            mx[i, q] = hi[a, q]


@numba.njit(cache=True, nogil=True)
def _corr2d_kernel(
    x: np.ndarray,
    tile_rows: int,
    mean: np.ndarray,
    m2: np.ndarray,
    mn: np.ndarray,
    mx: np.ndarray,
    c10: np.ndarray,
    c01: np.ndarray,
    c11: np.ndarray,
    c1m: np.ndarray,
) -> None:  # pragma: no cover
    """Moments and 2D neighbour co-moments of a C-contiguous ``(n, d1, d2)`` block.

    Tiles of ``tile_rows`` rows plus one halo row (the next tile recomputes the halo row's mean
    bit for bit): pass 1 gives the block means, pass 2 accumulates the centred products.
    """
    n, d1, d2 = x.shape
    # Scratch rows are padded so that rows written in the same loop do not sit at equal
    # addresses modulo 4 KiB (which would stall the stores on false dependencies).
    buf = np.empty((tile_rows + 1, d2 + 40), np.float64)
    acc = np.empty((tile_rows, 5, d2 + 16), np.float64)
    lo = np.empty((tile_rows + 1, d2 + 24), x.dtype)
    hi = np.empty((tile_rows + 1, d2 + 56), x.dtype)
    for i0 in range(0, d1, tile_rows):
        i1 = min(i0 + tile_rows, d1)
        ie = min(i1 + 1, d1)
        _rows_mean(x, i0, ie, mean, mn, mx, lo, hi)
        acc[:] = 0.0
        for t in range(n):
            for i in range(i0, ie):
                _centre_row(x[t, i], mean[i], buf[i - i0], d2)
            for i in range(i0, i1):
                a = i - i0
                if i + 1 < d1:
                    _pairs2d_row(
                        buf[a],
                        buf[a + 1],
                        acc[a, 0],
                        acc[a, 1],
                        acc[a, 2],
                        acc[a, 3],
                        acc[a, 4],
                        d2,
                    )
                else:
                    _pairs2d_last(buf[a], acc[a, 0], acc[a, 1], d2)
        for i in range(i0, i1):
            a = i - i0
            for q in range(d2):
                m2[i, q] = acc[a, 0, q]
                c01[i, q] = acc[a, 1, q]
                c10[i, q] = acc[a, 2, q]
                c11[i, q] = acc[a, 3, q]
                c1m[i, q] = acc[a, 4, q]


@numba.njit(cache=True, nogil=True)
def _corr3d_kernel(
    x: np.ndarray,
    tile_rows: int,
    d3: int,
    mean: np.ndarray,
    c100: np.ndarray,
    c010: np.ndarray,
    c001: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """3D face co-moments of a C-contiguous block viewed as ``(n, d1, d2 * d3)``.

    ``mean`` (viewed ``(d1, d2 * d3)``) must already hold the block means (from
    :func:`_moments_kernel`; planes are large, so the means are not recomputed per tile). Tiles of
    ``tile_rows`` planes plus one halo plane.
    """
    n, d1, r = x.shape
    d2 = r // d3
    buf = np.empty((tile_rows + 1, r + 40), np.float64)
    acc = np.empty((tile_rows, 3, r + 16), np.float64)
    for i0 in range(0, d1, tile_rows):
        i1 = min(i0 + tile_rows, d1)
        ie = min(i1 + 1, d1)
        acc[:] = 0.0
        for t in range(n):
            for i in range(i0, ie):
                _centre_row(x[t, i], mean[i], buf[i - i0], r)
            for i in range(i0, i1):
                a = i - i0
                has_next = i + 1 < d1
                b = buf[a + 1] if has_next else buf[a]
                _pairs3d_row(buf[a], b, has_next, acc[a, 0], acc[a, 1], r, d3)
                _pairs3d_depth(buf[a], acc[a, 2], d2, d3)
        for i in range(i0, i1):
            a = i - i0
            for q in range(r):
                c010[i, q] = acc[a, 0, q]
                c100[i, q] = acc[a, 1, q]
                c001[i, q] = acc[a, 2, q]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _as_kernel_input(block: np.ndarray) -> np.ndarray:
    """C-contiguous float32/float64 version of ``block`` (copies only when needed)."""
    arr = np.asarray(block)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def _empty_stats(dims: tuple[int, ...], corr: bool) -> Stats:
    out: Stats = {
        "n": 0,
        "mean": np.zeros(dims),
        "m2": np.zeros(dims),
        "min": np.full(dims, np.inf),
        "max": np.full(dims, -np.inf),
    }
    if corr:
        out["comoment"] = np.zeros((len(corr_offsets(len(dims))), *dims))
    return out


def block_stats(block: np.ndarray, *, corr: bool) -> dict[str, np.ndarray | int]:
    """Statistics of one time block of a movie.

    Parameters
    ----------
    block : numpy.ndarray
        Frames ``(n, *dims)`` (``n`` may be 0 or 1). Any real dtype; float32 and float64 are
        read as they are, other dtypes are converted to float64 first. A non C-contiguous block
        is copied once. All accumulation is in float64.
    corr : bool
        Also accumulate the neighbour co-moments needed by CaImAn's correlation image
        (``dims`` must then be 2D or 3D).

    Returns
    -------
    dict
        ``{"n": int, "mean", "m2", "min", "max": float64 (dims)}`` and, with ``corr=True``,
        ``"comoment": float64 (K, *dims)`` ordered as :func:`corr_offsets`. See the module
        docstring for the exact definitions.

    Raises
    ------
    ShapeMismatchError
        If ``block`` has fewer than 2 dimensions, or ``corr=True`` and the frames are not 2D/3D.
    """
    arr = np.asarray(block)
    if arr.ndim < 2:
        raise ShapeMismatchError(
            f"block must be shaped (n, *dims) with at least one frame dimension, got shape "
            f"{arr.shape}; add a time axis, e.g. block[None]"
        )
    n = int(arr.shape[0])
    dims = tuple(int(d) for d in arr.shape[1:])
    if corr:
        corr_offsets(len(dims))  # validates ndim
    out = _empty_stats(dims, corr)
    if n == 0 or int(np.prod(dims)) == 0:
        out["n"] = n
        return out
    x = _as_kernel_input(arr)
    out["n"] = n
    mean, m2, mn, mx = out["mean"], out["m2"], out["min"], out["max"]
    npix = int(np.prod(dims))
    if not corr or len(dims) == 3:
        tile = max(64, _TILE_BYTES // (n * x.itemsize))
        _moments_kernel(
            x.reshape(n, npix),
            min(tile, npix),
            mean.reshape(npix),
            m2.reshape(npix),
            mn.reshape(npix),
            mx.reshape(npix),
        )
    if not corr:
        return out
    com = out["comoment"]
    d1 = dims[0]
    row = npix // d1
    tile_rows = min(max(1, _TILE_BYTES // (n * row * x.itemsize) - 1), d1)
    if len(dims) == 2:
        _corr2d_kernel(x, tile_rows, mean, m2, mn, mx, com[0], com[1], com[2], com[3])
    else:
        shape2 = (d1, row)
        _corr3d_kernel(
            x.reshape(n, d1, row),
            tile_rows,
            dims[2],
            mean.reshape(shape2),
            com[0].reshape(shape2),
            com[1].reshape(shape2),
            com[2].reshape(shape2),
        )
    return out


def stats_to_c_order(stats: Mapping[str, Any], dims: Sequence[int]) -> Stats:
    """Statistics of a movie stored with its spatial axes reversed, re-expressed for ``dims``.

    A block laid out as ``(n, *dims[::-1])`` (a CaImAn frame-major memmap read in its own
    Fortran pixel order) gives per-pixel statistics on the reversed grid; this transposes them
    and maps the neighbour co-moments onto the offsets of :func:`corr_offsets` for ``dims``
    (the same numbers, bit for bit, as reducing the transposed frames directly).
    """
    dims = tuple(int(d) for d in dims)
    nd = len(dims)
    rev = tuple(range(nd - 1, -1, -1))
    out: Stats = {"n": stats["n"]}
    for key in ("mean", "m2", "min", "max"):
        out[key] = np.ascontiguousarray(np.transpose(stats[key], rev))
    if "comoment" not in stats:
        return out
    com = stats["comoment"]
    offsets = corr_offsets(nd)  # the reversed grid has the same offsets (same ndim)
    new = np.zeros((len(offsets), *dims))
    for k, off in enumerate(offsets):
        moved = np.transpose(com[k], rev)  # anchored at the reversed pair's first pixel
        target = tuple(off[::-1])
        if target in offsets:
            new[offsets.index(target)] = moved
        else:  # 2D anti-diagonal (1, -1) of the reversed grid is (-1, 1): re-anchor it
            neg = tuple(-o for o in target)
            j = offsets.index(neg)
            # new[x + target] = moved[x] for every x with both pixels inside the frame
            pairs = list(zip(target, dims, strict=True))
            src = tuple(slice(max(0, -o), d - max(0, o)) for o, d in pairs)
            dst = tuple(slice(max(0, o), d + min(0, o)) for o, d in pairs)
            new[j][dst] = moved[src]
    out["comoment"] = new
    return out


def merge_stats(a: Mapping[str, Any], b: Mapping[str, Any]) -> Stats:
    """Exactly merge the statistics of two disjoint sets of frames (Chan et al. update).

    Parameters
    ----------
    a, b : dict
        Outputs of :func:`block_stats` / :func:`merge_stats` for the same ``dims``. Both must
        have ``"comoment"`` for the result to have it. Inputs are not modified.

    Returns
    -------
    dict
        Statistics of the union of the frames (same keys as the inputs; ``"comoment"`` only if
        both inputs have it). The order of ``a`` and ``b`` does not matter up to rounding.

    Raises
    ------
    ShapeMismatchError
        If the two inputs describe frames of different shapes.
    """
    if a["mean"].shape != b["mean"].shape:
        raise ShapeMismatchError(
            f"cannot merge statistics of frames shaped {a['mean'].shape} and "
            f"{b['mean'].shape}; merge only blocks of the same movie"
        )
    corr = "comoment" in a and "comoment" in b
    na, nb = int(a["n"]), int(b["n"])
    n = na + nb
    out: Stats = {
        "n": n,
        "min": np.minimum(a["min"], b["min"]),
        "max": np.maximum(a["max"], b["max"]),
    }
    if na == 0 or nb == 0:
        src = b if na == 0 else a
        out["mean"] = np.array(src["mean"], dtype=np.float64, copy=True)
        out["m2"] = np.array(src["m2"], dtype=np.float64, copy=True)
        if corr:
            out["comoment"] = np.array(src["comoment"], dtype=np.float64, copy=True)
        return out
    delta = np.subtract(b["mean"], a["mean"], dtype=np.float64)
    out["mean"] = a["mean"] + delta * (nb / n)
    f = na * nb / n
    out["m2"] = a["m2"] + b["m2"] + f * delta * delta
    if corr:
        dims = delta.shape
        com = np.add(a["comoment"], b["comoment"], dtype=np.float64)
        for k, off in enumerate(corr_offsets(len(dims))):
            sx, sy = _pair_slices(off, dims)
            com[k][sx] += f * delta[sx] * delta[sy]
        out["comoment"] = com
    return out


def merge_many(stats: Iterable[Mapping[str, Any]]) -> Stats:
    """Merge any number of statistics dictionaries (pairwise tree, for accuracy).

    Parameters
    ----------
    stats : iterable of dict
        Outputs of :func:`block_stats` / :func:`merge_stats` of the same movie, in any order.

    Returns
    -------
    dict
        The merged statistics; a single input is returned as a copy.

    Raises
    ------
    ShapeMismatchError
        If ``stats`` is empty.
    """
    items: list[Mapping[str, Any]] = list(stats)
    if not items:
        raise ShapeMismatchError(
            "merge_many needs at least one statistics dictionary, got none (a movie of zero "
            "blocks); pass the statistics of at least one block"
        )
    if len(items) == 1:
        only = items[0]
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in only.items()}
    while len(items) > 1:
        nxt: list[Mapping[str, Any]] = [
            merge_stats(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)
        ]
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return dict(items[0])


def finalize(stats: Mapping[str, Any], kinds: Iterable[str]) -> dict[str, np.ndarray]:
    """Turn merged statistics into images.

    Parameters
    ----------
    stats : dict
        Output of :func:`block_stats` / :func:`merge_stats` / :func:`merge_many`.
    kinds : iterable of str
        Any of ``"mean"``, ``"std"`` (population, ddof=0), ``"min"``, ``"max"``, ``"corr"``
        (CaImAn's ``local_correlations(..., eight_neighbours=True, order_mean=1,
        swap_dim=False)``, computed by :func:`caiman_corr_from_pairs`; needs statistics made
        with ``corr=True``).

    Returns
    -------
    dict of str to numpy.ndarray
        One float64 array shaped ``dims`` per requested kind (fresh arrays).

    Raises
    ------
    OptionError
        Unknown kind, or ``"corr"`` requested from statistics without co-moments.
    ShapeMismatchError
        If the statistics cover zero frames.
    """
    wanted = list(dict.fromkeys(kinds))
    bad = [k for k in wanted if k not in FINALIZE_KINDS]
    if bad:
        raise OptionError(f"kinds={bad!r} not understood; valid kinds are {sorted(FINALIZE_KINDS)}")
    n = int(stats["n"])
    if n == 0:
        raise ShapeMismatchError("cannot finalize statistics of zero frames (the movie is empty)")
    if "corr" in wanted and "comoment" not in stats:
        raise OptionError(
            "kind 'corr' needs co-moments; compute the block statistics with corr=True"
        )
    out: dict[str, np.ndarray] = {}
    var: np.ndarray | None = None
    if "std" in wanted or "corr" in wanted:
        var = np.asarray(stats["m2"], dtype=np.float64) / n
        var[np.asarray(stats["min"]) == np.asarray(stats["max"])] = 0.0
        np.maximum(var, 0.0, out=var)
    for kind in wanted:
        if kind == "mean":
            out[kind] = np.array(stats["mean"], dtype=np.float64, copy=True)
        elif kind == "min":
            out[kind] = np.array(stats["min"], dtype=np.float64, copy=True)
        elif kind == "max":
            out[kind] = np.array(stats["max"], dtype=np.float64, copy=True)
        elif kind == "std":
            assert var is not None
            out[kind] = np.sqrt(var)
        else:  # corr
            assert var is not None
            dims = var.shape
            com = np.asarray(stats["comoment"], dtype=np.float64)
            cov_pairs = {off: com[k] / n for k, off in enumerate(corr_offsets(len(dims)))}
            out[kind] = caiman_corr_from_pairs(var, cov_pairs, dims)
    return out


def _neighbour_count(dims: tuple[int, ...]) -> np.ndarray:
    """CaImAn's neighbour counts: 8/5/3 (2D, 8-neighbourhood), 6 minus touched faces (3D)."""
    if len(dims) == 2:
        per_axis = []
        for ax, d in enumerate(dims):
            idx = np.arange(d)
            counts = 1 + (idx > 0).astype(np.int64) + (idx < d - 1).astype(np.int64)
            shape = [1, 1]
            shape[ax] = d
            per_axis.append(counts.reshape(shape))
        return (per_axis[0] * per_axis[1] - 1).astype(np.float64)
    count = np.zeros(dims, dtype=np.float64)
    for ax, d in enumerate(dims):
        idx = np.arange(d)
        c = (idx > 0).astype(np.float64) + (idx < d - 1).astype(np.float64)
        shape = [1] * len(dims)
        shape[ax] = d
        count += c.reshape(shape)
    return count


def caiman_corr_from_pairs(
    var: np.ndarray,
    cov_pairs: Mapping[tuple[int, ...], np.ndarray],
    dims: Sequence[int],
) -> np.ndarray:
    """CaImAn's local correlation image from per-pixel variances and neighbour covariances.

    Reproduces ``caiman.local_correlations(Y, eight_neighbours=True, order_mean=1,
    swap_dim=False)`` for a movie ``Y`` shaped ``(T, *dims)``, quirks included, from population
    moments. With ``w = (x - mean_t x) / std_t x`` CaImAn averages over time the products of
    ``w`` at neighbouring pixels; here the pair correlation is ``rho(p, q) = cov(p, q) /
    (std_p * std_q)``, which is the same number.

    2D (``dims = (d1, d2)``), with ``r[o] = rho`` of the pair ``(x, x + o)`` taken at ``x``:

    - vertical ``v[i, j] = r[(1, 0)][i, j]`` is added to pixels ``(i, j)`` and ``(i+1, j)``;
    - horizontal ``h[i, j] = r[(0, 1)][i, j]`` is added to ``(i, j)`` and ``(i, j+1)``;
    - main diagonal ``d2[i, j] = r[(1, 1)][i, j]`` (pair ``(i, j)``-``(i+1, j+1)``) is added to
      ``(i, j)`` **and to** ``(i, j+1)`` (not part of the pair: CaImAn's quirk);
    - anti-diagonal: CaImAn's ``d1[i, j] = <w[i+1, j] w[i, j+1]>`` is the pair
      ``(i, j+1)``-``(i+1, j)``, i.e. offset ``(1, -1)`` taken at ``x = (i, j+1)``:
      ``d1[i, j] = r[(1, -1)][i, j+1]`` for ``0 <= i < d1-1``, ``0 <= j < d2-1``. It is added
      to ``(i+1, j)`` (part of the pair) **and to** ``(i+1, j+1)`` (not part of it);
    - the sum is divided by the neighbour count: 8 inside, 5 on an edge, 3 in a corner
      (``(#rows in reach) * (#columns in reach) - 1``).

    3D (``dims = (d1, d2, d3)``): only the 3 face pairs ``(1,0,0)``, ``(0,1,0)``, ``(0,0,1)``,
    each added to both of its pixels, divided by 6 minus one per face of the volume the pixel
    touches.

    A pixel with zero standard deviation (``var <= 0``, or NaN) makes every pair it belongs to
    NaN, and the NaN reaches every pixel those pairs are added to (as in CaImAn, where ``w`` is
    ``0/0``).

    Parameters
    ----------
    var : numpy.ndarray
        Population variance (ddof=0) per pixel, shaped ``dims``.
    cov_pairs : mapping of tuple to numpy.ndarray
        Population covariance per neighbour offset, each shaped ``dims``: value at ``x`` is
        ``cov(x, x + offset)``; entries where ``x + offset`` is outside the frame are ignored
        (NaN or anything). 2D keys ``(1, 0)``, ``(0, 1)``, ``(1, 1)``, ``(1, -1)``; 3D keys
        ``(1, 0, 0)``, ``(0, 1, 0)``, ``(0, 0, 1)``. Extra keys are ignored.
    dims : sequence of int
        Frame shape, 2D or 3D.

    Returns
    -------
    numpy.ndarray
        float64 image shaped ``dims``.

    Raises
    ------
    ShapeMismatchError
        If ``dims`` is not 2D/3D, or ``var`` or a covariance array is not shaped ``dims``.
    OptionError
        If a required offset key is missing from ``cov_pairs``.
    """
    dims_t = tuple(int(d) for d in dims)
    offsets = corr_offsets(len(dims_t))
    var = np.asarray(var, dtype=np.float64)
    if var.shape != dims_t:
        raise ShapeMismatchError(f"var has shape {var.shape}, expected dims {dims_t}")
    missing = [o for o in offsets if o not in cov_pairs]
    if missing:
        raise OptionError(
            f"cov_pairs lacks the offsets {missing}; for {len(dims_t)}D frames it needs keys "
            f"{list(offsets)}"
        )
    zero = ~(var > 0)  # also catches NaN
    std = np.sqrt(np.where(zero, 1.0, var))

    def rho(off: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...]]:
        cov = np.asarray(cov_pairs[off], dtype=np.float64)
        if cov.shape != dims_t:
            raise ShapeMismatchError(
                f"cov_pairs[{off}] has shape {cov.shape}, expected dims {dims_t}"
            )
        sx, sy = _pair_slices(off, dims_t)
        r = cov[sx] / (std[sx] * std[sy])
        r[zero[sx] | zero[sy]] = np.nan
        return r, sx, sy

    acc = np.zeros(dims_t, dtype=np.float64)
    if len(dims_t) == 2:
        for off in ((1, 0), (0, 1)):
            r, sx, sy = rho(off)
            acc[sx] += r
            acc[sy] += r
        r, sx, _ = rho((1, 1))  # d2[i, j] at x = (i, j), i < d1-1, j < d2-1
        acc[sx] += r
        acc[:-1, 1:] += r
        r, sx, _ = rho((1, -1))  # at x = (i, j+1): CaImAn's d1[i, j]
        acc[1:, :-1] += r
        acc[1:, 1:] += r
    else:
        for offset in offsets:
            r, sx, sy = rho(offset)
            acc[sx] += r
            acc[sy] += r
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / _neighbour_count(dims_t)


def local_correlations_reference(movie: np.ndarray) -> np.ndarray:
    """Dense float64 reference of CaImAn's ``local_correlations`` (defaults, ``swap_dim=False``).

    Straight arithmetic on the whole movie, for tests: standardise each pixel's trace
    (``w = (x - mean) / std``, population std; ``w`` is NaN for a pixel whose trace is constant,
    i.e. ``min == max``), take time means of products of ``w`` over neighbour pairs and sum them
    per pixel the way CaImAn does (see :func:`caiman_corr_from_pairs`), then divide by the
    neighbour count.

    Parameters
    ----------
    movie : numpy.ndarray
        ``(T, d1, d2)`` or ``(T, d1, d2, d3)``, any real dtype (computed in float64).

    Returns
    -------
    numpy.ndarray
        float64 image shaped ``movie.shape[1:]``.
    """
    y = np.asarray(movie, dtype=np.float64)
    dims = tuple(y.shape[1:])
    corr_offsets(len(dims))  # validates ndim
    mean = y.mean(axis=0)
    std = y.std(axis=0)
    std[y.min(axis=0) == y.max(axis=0)] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        w = (y - mean) / std
    w[:, std == 0] = np.nan
    acc = np.zeros(dims)
    if len(dims) == 2:
        v = (w[:, :-1, :] * w[:, 1:, :]).mean(axis=0)
        h = (w[:, :, :-1] * w[:, :, 1:]).mean(axis=0)
        d2 = (w[:, :-1, :-1] * w[:, 1:, 1:]).mean(axis=0)
        d1 = (w[:, 1:, :-1] * w[:, :-1, 1:]).mean(axis=0)
        acc[:-1, :] += v
        acc[1:, :] += v
        acc[:, :-1] += h
        acc[:, 1:] += h
        acc[:-1, :-1] += d2
        acc[:-1, 1:] += d2
        acc[1:, :-1] += d1
        acc[1:, 1:] += d1
        count = np.zeros(dims)
        padded = np.pad(np.ones(dims), 1)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di or dj:
                    count += padded[1 + di : 1 + di + dims[0], 1 + dj : 1 + dj + dims[1]]
    else:
        a = (w[:, :-1] * w[:, 1:]).mean(axis=0)
        b = (w[:, :, :-1] * w[:, :, 1:]).mean(axis=0)
        c = (w[:, :, :, :-1] * w[:, :, :, 1:]).mean(axis=0)
        acc[:-1] += a
        acc[1:] += a
        acc[:, :-1] += b
        acc[:, 1:] += b
        acc[:, :, :-1] += c
        acc[:, :, 1:] += c
        count = np.zeros(dims)
        padded = np.pad(np.ones(dims), 1)
        for ax in range(3):
            for s in (-1, 1):
                sl = [slice(1, 1 + d) for d in dims]
                sl[ax] = slice(1 + s, 1 + s + dims[ax])
                count += padded[tuple(sl)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / count
