"""Frame kernels: footprints, background and movie into C-ordered frames; no dask inside.

:func:`frames` writes frames in C pixel order into a caller-provided ``out`` array of shape
``(n, npix)`` (C-contiguous), so results never need a Fortran→C transpose; the footprints are
permuted to C pixel order once, beforehand. :func:`frames_reference` is its plain NumPy twin.
The compiled kernels add footprint runs and reorder movie frames with the routines of
:mod:`caiman_dask._simd` (hand-written SIMD or their plain twins: bitwise the same frames).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse

from . import _buffers
from ._simd import axpy8, njit_per_variant, transpose8

__all__ = [
    "Runs",
    "c_to_f_permutation",
    "footprint_runs",
    "frame_rows",
    "frames",
    "frames_reference",
    "fused",
    "gather_pixel_major",
    "n_bands",
    "pixel_major",
    "residual_bands",
]


def c_to_f_permutation(dims: Sequence[int]) -> np.ndarray:
    """``perm[p_c] = p_f``: the Fortran (CaImAn) index of each pixel taken in C order."""
    P = math.prod(dims)
    return np.arange(P, dtype=np.int64).reshape(tuple(dims), order="F").ravel(order="C")


@numba.njit(cache=True, nogil=True)
def _add_lowrank(o, b, f):  # pragma: no cover - compiled
    """``o += b @ f`` for one frame (``b`` is ``(npix, nb)``)."""
    nb = b.shape[1]
    P = o.shape[0]
    if nb == 1:
        f0 = f[0]
        for p in range(P):
            o[p] += b[p, 0] * f0
    elif nb == 2:
        f0 = f[0]
        f1 = f[1]
        for p in range(P):
            o[p] += b[p, 0] * f0 + b[p, 1] * f1
    else:
        for p in range(P):
            acc = 0.0
            for r in range(nb):
                acc += b[p, r] * f[r]
            o[p] += acc


#: Pixels per band of the frame kernels (a float64 band is 256 KiB: it stays in L2 while the
#: background and footprints are applied).
_BAND = 32768


@njit_per_variant()
def _add_runs(o, bptr, gcomp, gptr, start, off, length, data, c, alpha):  # pragma: no cover
    """``o += alpha * A @ c`` with ``A`` as runs of consecutive pixels (see
    :func:`footprint_runs`), band of pixels by band.

    Each run is one contiguous, vectorisable multiply-add. Within a band, components come in
    order, so each pixel receives its components in the same order as a CSC scatter: results
    are identical to it.
    """
    for band in range(len(bptr) - 1):
        _add_band_runs(o, 0, band, bptr, gcomp, gptr, start, off, length, data, c, alpha)


@njit_per_variant(inline="always")
def _add_band_runs(
    o, q0, band, bptr, gcomp, gptr, start, off, length, data, c, alpha
):  # pragma: no cover - compiled
    """``o[p - q0] += alpha * (A @ c)[p]`` for the pixels ``p`` of one band (see
    :func:`_add_runs`; ``q0``: the pixel at ``o[0]``).

    A run is a few pieces of 8 pixels (:data:`~._simd.axpy8`: masked vectors, or their plain
    twin); footprint rows are rarely longer than 16 pixels, so the first two are issued
    unconditionally, with no branch to mispredict on the run's length (a masked vector's).
    """
    for g in range(bptr[band], bptr[band + 1]):
        ck = c[gcomp[g]] * alpha
        if ck != 0.0:
            for r in range(gptr[g], gptr[g + 1]):
                s, d, n = start[r] - q0, off[r], length[r]
                axpy8(o, s, data, d, ck, n)
                axpy8(o, s + 8, data, d + 8, ck, n - 8)
                for i in range(16, n, 8):
                    axpy8(o, s + i, data, d + i, ck, n - i)


@dataclass(frozen=True)
class Runs:
    """Footprints (CSC, rows = pixels) as runs of consecutive pixels, grouped by band of
    pixels, then by component."""

    bptr: np.ndarray  # int64 (n_bands + 1,): each band's groups
    gcomp: np.ndarray  # int64: each group's component
    gptr: np.ndarray  # int64 (n_groups + 1,): each group's runs
    start: np.ndarray  # int64: each run's first pixel
    off: np.ndarray  # int64: each run's first stored entry
    length: np.ndarray  # int64: each run's length
    data: np.ndarray  # the CSC's values

    @property
    def comp(self) -> np.ndarray:
        """Each run's component."""
        return np.repeat(self.gcomp, np.diff(self.gptr))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel's arguments, in order."""
        return self.bptr, self.gcomp, self.gptr, self.start, self.off, self.length, self.data


def footprint_runs(A: scipy.sparse.csc_matrix) -> Runs:
    """``A``'s columns as runs of consecutive rows; computed once per matrix object (kept
    while ``A`` lives).

    Footprints are compact blobs, so a component of ~150 pixels is ~12 runs: the frame kernel
    then does a few contiguous multiply-adds instead of ~150 scattered ones. Runs are split at
    band boundaries (:data:`_BAND` pixels) and ordered by band, then component.
    """
    key = id(A)
    runs = _RUNS.get(key)
    if runs is not None:
        return runs
    owner = A
    if not A.has_sorted_indices:
        A = A.sorted_indices()
    P, K = A.shape
    idx = A.indices.astype(np.int64)
    nnz = len(idx)
    col = np.repeat(np.arange(K, dtype=np.int64), np.diff(A.indptr))
    band = idx // _BAND
    new = np.ones(nnz, bool)
    if nnz:
        new[1:] = (idx[1:] != idx[:-1] + 1) | (col[1:] != col[:-1]) | (band[1:] != band[:-1])
    off = np.flatnonzero(new).astype(np.int64)
    length = np.diff(np.append(off, nnz)).astype(np.int64)
    order = np.lexsort((col[off], band[off]))  # by band, then component
    off, length = off[order], length[order]
    rband, rcomp = band[off], col[off]
    first = np.ones(len(off), bool)  # first run of each (band, component) group
    first[1:] = (rband[1:] != rband[:-1]) | (rcomp[1:] != rcomp[:-1])
    g0 = np.flatnonzero(first)
    n_bands = max(1, -(-P // _BAND))
    runs = Runs(
        bptr=np.searchsorted(rband[g0], np.arange(n_bands + 1)).astype(np.int64),
        gcomp=rcomp[g0],
        gptr=np.append(g0, len(off)).astype(np.int64),
        start=idx[off],
        off=off,
        length=length,
        data=A.data,
    )
    _RUNS[key] = runs
    weakref.finalize(owner, _RUNS.pop, key, None)  # dropped with the matrix (before its id
    return runs  # can be reused)


#: :func:`footprint_runs` of live matrices, by ``id`` (no attribute is set on the matrix).
_RUNS: dict[int, Runs] = {}


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


@njit_per_variant()
def _copy_rows(o, q0, y, transposed, h, w, p0, p1):  # pragma: no cover - compiled
    """``o[p - q0] = frame[p]`` for C-order pixels ``p0 <= p < p1`` of an ``h × w`` frame
    stored flat in ``y``: in C order, or transposed (``y[j * h + i]`` is pixel ``(i, j)``)."""
    if not transposed:
        for p in range(p0, p1):
            o[p - q0] = y[p]
        return
    ra = min(-(-p0 // w), p1 // w)  # first full row; rows ra:rb are whole, the rest partial
    rb = p1 // w
    for p in range(p0, min(p1, ra * w)):  # the band's first, partial row
        o[p - q0] = y[(p % w) * h + p // w]
    i0 = ra
    while i0 + 8 <= rb:  # 8 × 8 blocks
        j0 = 0
        while j0 + 8 <= w:
            transpose8(y, j0 * h + i0, h, o, i0 * w + j0 - q0, w)
            j0 += 8
        for i in range(i0, i0 + 8):
            for j in range(j0, w):
                o[i * w + j - q0] = y[j * h + i]
        i0 += 8
    for i in range(i0, rb):
        for j in range(w):
            o[i * w + j - q0] = y[j * h + i]
    for p in range(max(p0, rb * w), p1):  # the band's last, partial row
        o[p - q0] = y[(p % w) * h + p // w]


@njit_per_variant()
def _residual_bands(
    out,
    y,
    transposed,
    h,
    w,
    b,
    ft,
    bptr,
    gcomp,
    gptr,
    start,
    off,
    length,
    data,
    Ct,
    minus,
    band0,
    band1,
    sb,
):  # pragma: no cover - compiled
    """``out[t] = Y[t] - b @ ft[t] - A @ Ct[t]`` for ``h × w`` frames, pixel bands
    ``band0:band1``.

    ``out`` is ``(n, h * w)`` in C pixel order; ``y`` is ``(n, h * w)``, each frame in C order
    or ``transposed`` (a frame-major CaImAn memmap: Fortran pixel order). Band by band
    (:data:`_BAND` pixels, as in :func:`footprint_runs`), frames inside. Each band of a frame
    is assembled in the scratch band ``sb``, which stays in cache: copied in from ``y``
    (transposed 8 × 8 blocks at a time), the background subtracted in one contiguous sweep (the
    band's rows of ``b`` serve all frames), the band's footprint runs subtracted; then it is
    copied out in one sequential sweep. (Transposed stores straight into ``out``, whose lines
    are not in cache, cost three times as much.) Per pixel the arithmetic is that of
    :func:`frames`. ``minus``: -1 in ``out``'s dtype (the footprints' factor, as in
    :func:`_add_runs`).
    """
    n = y.shape[0]
    P = h * w
    for band in range(band0, band1):
        p0 = band * _BAND
        p1 = min(P, p0 + _BAND)
        bb = b[p0:p1]
        s = sb[: p1 - p0]
        for t in range(n):
            _copy_rows(s, p0, y[t], transposed, h, w, p0, p1)
            if bb.shape[1]:
                _add_lowrank(s, bb, -ft[t])  # o - (b f), rounded exactly as y - (b f)
            _add_band_runs(s, p0, band, bptr, gcomp, gptr, start, off, length, data, Ct[t], minus)
            ob = out[t, p0:p1]
            for q in range(p1 - p0):
                ob[q] = s[q]


@njit_per_variant()
def _model_bands(
    out, b, ft, bptr, gcomp, gptr, start, off, length, data, Ct, zero, one, band0, band1
):  # pragma: no cover - compiled
    """``out[t] = b @ ft[t] + A @ Ct[t]`` for pixel bands ``band0:band1``, band by band with
    frames inside: each band of a frame is written once in a sequential sweep (the low-rank
    term, or ``zero``), and its footprint runs added while it is in cache; the band's rows of
    ``b`` and its runs serve all frames.

    ``zero`` and ``one``: 0 and 1 in ``out``'s dtype (passed in, so that the compiler does not
    turn the zeroing loop into ``memset``, slower here than plain vector stores).
    """
    n, P = out.shape
    nb = b.shape[1]
    for band in range(band0, band1):
        p0 = band * _BAND
        p1 = min(P, p0 + _BAND)
        bb = b[p0:p1]
        for t in range(n):
            ob = out[t, p0:p1]
            if nb == 0:
                for q in range(p1 - p0):
                    ob[q] = zero
            elif nb == 1:
                f0 = ft[t, 0]
                for q in range(p1 - p0):
                    ob[q] = zero + bb[q, 0] * f0
            elif nb == 2:
                f0 = ft[t, 0]
                f1 = ft[t, 1]
                for q in range(p1 - p0):
                    ob[q] = zero + (bb[q, 0] * f0 + bb[q, 1] * f1)
            else:
                for q in range(p1 - p0):
                    acc = 0.0  # as in _add_lowrank
                    for r in range(nb):
                        acc += bb[q, r] * ft[t, r]
                    ob[q] = zero + acc
            _add_band_runs(ob, p0, band, bptr, gcomp, gptr, start, off, length, data, Ct[t], one)


#: Pixels per tile of :func:`_gather_pixel_major`.
_GATHER_TILE = 512


@njit_per_variant()
def _gather_pixel_major(z, src, s, n, P, pa, pb):  # pragma: no cover - compiled
    """``z[t * P + p] = src[p * s + t]`` for ``t < n``, ``pa <= p < pb``: frames of ``P``
    pixels out of a pixel-major block (each pixel's ``n`` values contiguous, pixels ``s``
    apart), 8 pixels × 8 frames at a time (:data:`~._simd.transpose8`).

    Tiles of :data:`_GATHER_TILE` pixels × 8 frames: a tile reads one short run from each of
    its pixels' rows (a page each: few enough for the TLB; the next tile of frames reads the
    same lines again from cache) and writes 8 frames, whose rows are a power of two apart in
    a 512 × 512 movie, so more of them at once would evict each other from the cache's sets.
    """
    if n < 8:  # (one frame: a plain strided gather, which the compiler vectorises)
        for t in range(n):
            for p in range(pa, pb):
                z[t * P + p] = src[p * s + t]
        return
    for q0 in range(pa, pb, _GATHER_TILE):
        q1 = min(pb, q0 + _GATHER_TILE)
        for t0 in range(0, n, 8):
            t1 = min(n, t0 + 8)
            p0 = q0
            if t1 - t0 == 8:
                while p0 + 8 <= q1:
                    transpose8(src, p0 * s + t0, s, z, t0 * P + p0, P)
                    p0 += 8
            for p in range(p0, q1):
                for t in range(t0, t1):
                    z[t * P + p] = src[p * s + t]


#: Frames gathered out of a pixel-major movie at a time (32 MiB of 512 × 512 float32 frames).
_GATHER_FRAMES = 32


def pixel_major(Y: np.ndarray, npix: int) -> bool:
    """Whether ``Y`` is ``(n, h, w)`` frames of a pixel-major movie (a CaImAn ``order_C``
    memmap, the one CNMF reads): ``Y[t, i, j]`` at element ``t + s * (i + h * j)``, ``s >= n``.
    """
    if not _frames_2d(Y, npix):
        return False
    n, h, _ = Y.shape
    it = Y.itemsize
    s = Y.strides[1]
    return Y.strides[0] == it and s % it == 0 and s >= n * it and Y.strides[2] == h * s


def gather_pixel_major(z: np.ndarray, Y: np.ndarray, pixels: range) -> None:
    """Write pixels ``pixels`` (Fortran order) of the :func:`pixel_major` frames ``Y``
    (``(n, h, w)``) into ``z``: ``(n, w, h)`` C-contiguous, i.e. frame-major frames in Fortran
    pixel order, as :func:`residual_bands` reads them (``z.transpose(0, 2, 1)``). Pixel ranges
    are independent: threads can share the frames."""
    n, h, w = Y.shape
    s = Y.strides[1] // Y.itemsize
    span = (h * w - 1) * s + n
    src = np.lib.stride_tricks.as_strided(Y, shape=(span,), strides=(Y.itemsize,), writeable=False)
    _gather_pixel_major(z.reshape(-1), src, s, n, h * w, pixels.start, pixels.stop)


def frame_rows(Y: np.ndarray) -> tuple[np.ndarray, bool]:
    """A block of frames ``(n, *dims)`` as rows ``(n, P)`` in the pixel order it is stored in:
    free for frames stored one after another in C order (``False``) or in Fortran order, as a
    frame-major memmap holds them (``True``); a :func:`pixel_major` block is gathered into
    Fortran-ordered rows; anything else is copied to C order."""
    n = Y.shape[0]
    P = math.prod(Y.shape[1:])
    reverse = (0, *range(Y.ndim - 1, 0, -1))
    if Y.flags.c_contiguous:
        return Y.reshape(n, P), False
    if Y.transpose(reverse).flags.c_contiguous:
        return Y.transpose(reverse).reshape(n, P), True
    if pixel_major(Y, P):
        z = np.empty((n, Y.shape[2], Y.shape[1]), Y.dtype)
        gather_pixel_major(z, Y, range(P))
        return z.reshape(n, P), True
    return np.ascontiguousarray(Y).reshape(n, P), False


def n_bands(npix: int) -> int:
    """Bands of :data:`_BAND` pixels in a frame of ``npix`` pixels."""
    return max(1, -(-npix // _BAND))


def fused(Y: np.ndarray, npix: int) -> bool:
    """Whether :func:`residual_bands` takes movie frames ``Y``: ``(n, h, w)`` 2D frames of
    ``npix`` pixels, stored frame after frame in C or Fortran pixel order (a frame-major memmap;
    not a pixel-major one, whose frames are strided)."""
    if not _frames_2d(Y, npix):
        return False
    return Y.flags.c_contiguous or Y.transpose(0, 2, 1).flags.c_contiguous


def _frames_2d(Y: np.ndarray, npix: int) -> bool:
    """Whether ``Y`` is a non-empty ``(n, h, w)`` block of 2D frames of ``npix`` pixels in a
    dtype the compiled kernels read."""
    return Y.ndim == 3 and Y.shape[1] * Y.shape[2] == npix and len(Y) > 0 and _numeric(Y)


def _numeric(Y: np.ndarray) -> bool:
    """Whether the compiled kernels read ``Y``'s dtype (native-endian floats and integers)."""
    return Y.dtype.kind in "fiu" and Y.dtype.isnative


def _operands(
    dt: np.dtype,
    npix: int,
    n: int,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None,
    ft: np.ndarray | None,
) -> tuple[scipy.sparse.csc_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """The frame kernels' operands in dtype ``dt`` (no background: zero columns)."""
    if b is None or ft is None:
        b = np.zeros((npix, 0), dt)
        ft = np.zeros((n, 0), dt)
    b = np.ascontiguousarray(b, dtype=dt)
    ft = np.ascontiguousarray(ft, dtype=dt)
    Ct = np.ascontiguousarray(Ct, dtype=dt)
    if A.data.dtype != dt:
        A = A.astype(dt)
    return A, Ct, b, ft


def residual_bands(
    out: np.ndarray,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None,
    ft: np.ndarray | None,
    Y: np.ndarray,
    bands: range,
) -> None:
    """:func:`frames` with a movie whose frames pass :func:`fused`, for pixel bands ``bands``
    only (bands are independent: threads can share one frame)."""
    n, npix = out.shape
    A, Ct, b, ft = _operands(out.dtype, npix, n, A, Ct, b, ft)
    h, w = Y.shape[1:]
    transposed = not Y.flags.c_contiguous
    y = (Y.transpose(0, 2, 1) if transposed else Y).reshape(n, npix)  # no copy (see fused)
    runs = footprint_runs(A).arrays()
    minus = out.dtype.type(-1.0)
    sb = _scratch_band(out.dtype)
    _residual_bands(out, y, transposed, h, w, b, ft, *runs, Ct, minus, bands.start, bands.stop, sb)


class _ThreadScratch(threading.local):
    """Per-thread scratch bands, by dtype."""

    def __init__(self) -> None:
        self.bands: dict[np.dtype, np.ndarray] = {}


_local = _ThreadScratch()


def _scratch_band(dt: np.dtype) -> np.ndarray:
    """This thread's scratch band of :data:`_BAND` pixels in ``dt`` (kept: stays in cache)."""
    bufs = _local.bands
    buf = bufs.get(dt)
    if buf is None:
        buf = bufs[dt] = np.empty(_BAND, dt)
    return buf


def frames(
    out: np.ndarray,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None = None,
    ft: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> None:
    """Write ``out[t] = Y[t] − (b @ ft[t] + A @ Ct[t])``, or ``b @ ft[t] + A @ Ct[t]`` without Y.

    Band of :data:`_BAND` pixels by band, frames inside, so each band of an output frame is
    assembled in cache and written out once: the low-rank term (or zeros; for residuals the
    movie minus it) first, then the footprints of the non-zero traces added (runs of
    consecutive pixels in CSC column order, rows = pixels in C order; see
    :func:`footprint_runs`). Without a movie that is :func:`_model_bands`; 2D movie frames
    stored frame by frame (C order, or a frame-major memmap's Fortran order; see
    :func:`fused`) take :func:`residual_bands`, with the movie's frames reordered in cache as
    they are read; a pixel-major memmap's frames (see :func:`pixel_major`) are first gathered
    into frame-major scratch a block at a time. Other movies (3D, other strides) go frame by
    frame. Every path does the same arithmetic per pixel: results are bitwise the same.

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
    if Y is not None and fused(Y, npix):
        residual_bands(out, A, Ct, b, ft, Y, range(n_bands(npix)))
        return
    if Y is not None and pixel_major(Y, npix):
        # a block of frames at a time into frame-major scratch, each pixel's run of values
        # read once (not one strided pass over the whole file per frame), then the fused kernel
        h, w = Y.shape[1:]
        k = min(n, _GATHER_FRAMES)
        z = _buffers.empty((k, w, h), Y.dtype)
        for t0 in range(0, n, k):
            rows = slice(t0, min(n, t0 + k))
            zb = z[: rows.stop - t0]
            gather_pixel_major(zb, Y[rows], range(npix))
            fb = None if ft is None else ft[rows]
            frames(out[rows], A, Ct[rows], b, fb, zb.transpose(0, 2, 1))
        return
    dt = out.dtype
    A, Ct, b, ft = _operands(dt, npix, n, A, Ct, b, ft)
    runs = footprint_runs(A).arrays()
    if Y is None:
        _model_bands(out, b, ft, *runs, Ct, dt.type(0.0), dt.type(1.0), 0, n_bands(npix))
        return
    minus = dt.type(-1.0)
    for t in range(n):
        o = out[t]
        # NumPy reorders a strided or 3D frame fastest in its own dtype; then it is taken in
        # the output's dtype, as the fused kernel reads it, and one pass subtracts the background
        y = np.ascontiguousarray(Y[t]).reshape(-1)
        if y.dtype != dt:
            y = y.astype(dt)
        _set_minus_lowrank(o, y, b, ft[t])
        _add_runs(o, *runs, Ct[t], minus)


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
