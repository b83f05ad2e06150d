"""Correlation-moment kernel: per-pixel statistics and neighbour co-moments of residual frames.

:class:`CorrMomentsState` is :class:`~caiman_dask._moment_kernels.MomentsState` plus the four
2D neighbour co-moments that CaImAn's correlation image needs: it folds blocks of residual
frames ``y - b @ f - A @ c`` into running sums in one fused pass (the residual frames are never
stored) and gives the statistics of :func:`caiman_dask._streaming.block_stats` with
``corr=True``. No dask inside.

Numerics
--------
Each pixel's residuals ``r`` are shifted by its first residual ``sh`` (of the first frame
folded in) and the kernel accumulates, in float64 and in frame order, ``s1 = Σ d``,
``s2 = Σ d²``, the minimum and maximum of ``r``, and ``Σ d_x d_y`` for the four neighbour
pairs, with ``d = r - sh``. Then ``mean = sh + s1 / n``, ``m2 = s2 - s1² / n`` and
``comoment = Σ d_x d_y - s1_x s1_y / n``: identities for any per-pixel shifts.

Why that is accurate enough: the sums' rounding error is about eps · (summation growth) ·
``Σ d²``, and ``Σ d² = m2 · (1 + k²)`` with ``k = |mean - sh| / std``, the first residual's
distance from the mean in standard deviations. So ``m2`` is as accurate as a sum of centred
squares up to the factor ``1 + k²`` (the co-moments likewise, with ``k_x`` and ``k_y``). Raw
sums (no shift) would pay ``1 + mean² / var``, ~1e5 for a pixel of 1500 ± 5; residuals, and
even raw pixels, start a few standard deviations from their mean (``1 + k²`` ≲ 100: two of
sixteen digits). The tests bound the result against the two-pass, block-centred
:func:`~caiman_dask._streaming.block_stats` to 1e-9 of each statistic's scale (measured
~1e-14). A pixel whose residuals are all equal has ``d = 0`` exactly: its ``m2`` and its
co-moments are exactly 0 and its mean is that value, as ``block_stats`` gives (so CaImAn's
NaN pattern in the correlation image is reproduced).

Every frame's contribution is computed by the same arithmetic wherever the block boundaries
fall (groups of four frames update the accumulators in registers in the same order as one
frame at a time), so the result depends only on the order of the frames, not on how they are
split into :meth:`CorrMomentsState.update` calls: bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from ._moment_kernels import MomentsOperator, fold
from ._streaming import CORR_OFFSETS_2D
from .errors import ShapeMismatchError

__all__ = ["BAND_PIXELS", "CorrMomentsState"]

#: Pixels per row band of :func:`_corr_update` (rounded down to whole rows, at least one). A
#: band's accumulators (9 float64 per pixel), background rows, footprint products and scratch
#: (~1 MB) stay in L2 (1 MiB per core here) while the frames stream by.
BAND_PIXELS = 4096
#: Bytes of a band's footprint products for a chunk of frames (:func:`_footprint_products`).
_AC_BYTES = 256 * 1024
#: Most frames per chunk of footprint products.
_AC_FRAMES = 32
#: Frames copied at a time when ``update`` gets rows that are not C-contiguous float32/float64.
_COPY_FRAMES = 64

# planes of the state array
_SH, _S1, _S2, _LO, _HI, _C10, _C01, _C11, _C1M = range(9)


def _staggered(n: int) -> int:
    """A row length ``>= n`` whose rows of float64 start 320 bytes apart modulo 4 KiB (rows
    written in the same loop at equal addresses modulo 4 KiB would stall the stores on false
    dependencies)."""
    return -(-n // 512) * 512 + 40


def _padded_row(Cc: int) -> tuple[int, int]:
    """``(Cw, Wp)``: ``Cc`` rounded up to whole 8-lane vectors, and the stride of an image row in
    the state (room for the co-moment loops to run over ``Cw`` columns, one beyond)."""
    Cw = -(-Cc // 8) * 8
    return Cw, Cw + 8


# --------------------------------------------------------------------------------------------
# numba kernels (single-threaded, nogil: dask threads parallelise across blocks)
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _footprint_products(AC, c0, c1, cptr, cidx, cdat, CtT, t0, h):  # pragma: no cover
    """``AC[i - c0, s] = Σ_j A[cov[i], j] · C[j, t0 + s]`` for covered positions ``c0 <= i < c1``
    and ``s < h``: multiply-adds contiguous over frames, no data-dependent branches."""
    for i in range(c0, c1):
        row = AC[i - c0]
        for s in range(h):
            row[s] = 0.0
        for j in range(cptr[i], cptr[i + 1]):
            a = cdat[j]
            ck = CtT[cidx[j], t0 : t0 + h]
            for s in range(h):
                row[s] += a * ck[s]


@numba.njit(cache=True, nogil=True)
def _fill_extra(ex, G, s, pa, Cc, r0, r1, c0, cov, AC, bT, ft, t):  # pragma: no cover
    """``ex[4 q + g]`` = frame ``t + g``'s footprint products at pixel ``pa + q`` of an image
    row (plus background rows beyond the first two), ``g < G``; the row's covered pixels are
    ``cov[r0:r1]``, their products ``AC[r0 - c0 : r1 - c0, s : s + G]``. Without extra
    background rows only the covered entries are written: ``ex`` must be zero elsewhere."""
    nb = bT.shape[0]
    if nb > 2:
        for g in range(G):
            for q in range(Cc):
                ex[4 * q + g] = 0.0
            for k in range(2, nb):
                bk = bT[k, pa : pa + Cc]
                fk = ft[t + g, k]
                for q in range(Cc):
                    ex[4 * q + g] += bk[q] * fk
        for i in range(r0, r1):
            o = 4 * (cov[i] - pa)
            k = i - c0
            for g in range(G):
                ex[o + g] += AC[k, s + g]
    elif G == 4:
        for i in range(r0, r1):
            o = 4 * (cov[i] - pa)
            k = i - c0
            ex[o] = AC[k, s]
            ex[o + 1] = AC[k, s + 1]
            ex[o + 2] = AC[k, s + 2]
            ex[o + 3] = AC[k, s + 3]
    else:
        for i in range(r0, r1):
            ex[4 * (cov[i] - pa)] = AC[i - c0, s]


@numba.njit(cache=True, nogil=True)
def _clear_extra(ex, pa, r0, r1, cov):  # pragma: no cover - compiled
    """Zero the entries :func:`_fill_extra` wrote for the covered pixels (all four frames)."""
    for i in range(r0, r1):
        o = 4 * (cov[i] - pa)
        ex[o] = 0.0
        ex[o + 1] = 0.0
        ex[o + 2] = 0.0
        ex[o + 3] = 0.0


@numba.njit(cache=True, nogil=True)
def _row_first(y, pa, Cc, ex, bT, ft, sh, s1, s2, lo, hi):  # pragma: no cover - compiled
    """Frame 0 of a fresh state over the image row ``pa : pa + Cc`` (state rows ``sh`` ...
    ``hi``): shift, minimum and maximum are its residual, the sums 0."""
    yt = y[0, pa : pa + Cc]
    b0 = bT[0, pa : pa + Cc]
    b1 = bT[1, pa : pa + Cc]
    f0 = ft[0, 0]
    f1 = ft[0, 1]
    for q in range(Cc):
        v = yt[q] - (b0[q] * f0 + b1[q] * f1) - ex[4 * q]
        sh[q] = v
        lo[q] = v
        hi[q] = v
        s1[q] = 0.0
        s2[q] = 0.0


@numba.njit(cache=True, nogil=True)
def _row4(y, t, pa, Cc, own, ex, D, od, bT, ft, sh, s1, s2, lo, hi):  # pragma: no cover
    """Frames ``t : t + 4`` over the image row ``pa : pa + Cc``: ``D[g, od : od + Cc]`` =
    shifted residuals of frame ``t + g``; with ``own`` also folded into the row's sums, minimum and
    maximum (state rows ``sh`` ... ``hi``), in frame order (the accumulators are loaded and
    stored once per four frames)."""
    ya = y[t, pa : pa + Cc]
    yb = y[t + 1, pa : pa + Cc]
    yc = y[t + 2, pa : pa + Cc]
    yd = y[t + 3, pa : pa + Cc]
    b0 = bT[0, pa : pa + Cc]
    b1 = bT[1, pa : pa + Cc]
    da = D[0, od : od + Cc]
    db = D[1, od : od + Cc]
    dc = D[2, od : od + Cc]
    dd = D[3, od : od + Cc]
    fa0, fa1 = ft[t, 0], ft[t, 1]
    fb0, fb1 = ft[t + 1, 0], ft[t + 1, 1]
    fc0, fc1 = ft[t + 2, 0], ft[t + 2, 1]
    fd0, fd1 = ft[t + 3, 0], ft[t + 3, 1]
    if own:
        for q in range(Cc):
            bq0 = b0[q]
            bq1 = b1[q]
            shq = sh[q]
            u1 = s1[q]
            u2 = s2[q]
            mn = lo[q]
            mx = hi[q]
            v = ya[q] - (bq0 * fa0 + bq1 * fa1) - ex[4 * q]
            da[q] = v - shq
            u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
            v = yb[q] - (bq0 * fb0 + bq1 * fb1) - ex[4 * q + 1]
            db[q] = v - shq
            u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
            v = yc[q] - (bq0 * fc0 + bq1 * fc1) - ex[4 * q + 2]
            dc[q] = v - shq
            u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
            v = yd[q] - (bq0 * fd0 + bq1 * fd1) - ex[4 * q + 3]
            dd[q] = v - shq
            u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
            s1[q] = u1
            s2[q] = u2
            lo[q] = mn
            hi[q] = mx
    else:
        for q in range(Cc):
            bq0 = b0[q]
            bq1 = b1[q]
            shq = sh[q]
            da[q] = ya[q] - (bq0 * fa0 + bq1 * fa1) - ex[4 * q] - shq
            db[q] = yb[q] - (bq0 * fb0 + bq1 * fb1) - ex[4 * q + 1] - shq
            dc[q] = yc[q] - (bq0 * fc0 + bq1 * fc1) - ex[4 * q + 2] - shq
            dd[q] = yd[q] - (bq0 * fd0 + bq1 * fd1) - ex[4 * q + 3] - shq


@numba.njit(cache=True, nogil=True)
def _row1(y, t, pa, Cc, own, ex, D, od, bT, ft, sh, s1, s2, lo, hi):  # pragma: no cover
    """:func:`_row4` for the one frame ``t`` (into ``D[0]``)."""
    yt = y[t, pa : pa + Cc]
    b0 = bT[0, pa : pa + Cc]
    b1 = bT[1, pa : pa + Cc]
    d = D[0, od : od + Cc]
    f0 = ft[t, 0]
    f1 = ft[t, 1]
    if own:
        for q in range(Cc):
            shq = sh[q]
            v = yt[q] - (b0[q] * f0 + b1[q] * f1) - ex[4 * q]
            d[q] = v - shq
            s1[q], s2[q], lo[q], hi[q] = fold(v, shq, s1[q], s2[q], lo[q], hi[q])
    else:
        for q in range(Cc):
            d[q] = yt[q] - (b0[q] * f0 + b1[q] * f1) - ex[4 * q] - sh[q]


@numba.njit(cache=True, nogil=True)
def _pairs4(D, o, w, Wp, has_below, c10, c01, c11, c1m):  # pragma: no cover - compiled
    """Add four frames' neighbour products of image rows (shifted residuals ``D[g, o : o + w]``,
    rows ``Wp`` apart) with their right neighbours and (when ``has_below``) the rows below to
    the co-moment sums ``c..[:w]``, frame by frame in order (the sums are loaded and stored
    once per four frames).

    One flat loop over whole padded rows: ``D`` is 0 in the padding, and the sums of pairs
    that leave the frame (padding columns, the right neighbours of the last column, the
    lower-left neighbours of the first) are never read.
    """
    e = o + w + 1
    a0 = D[0, o:e]
    a1 = D[1, o:e]
    a2 = D[2, o:e]
    a3 = D[3, o:e]
    if not has_below:
        for q in range(w):
            c01[q] = (((c01[q] + a0[q] * a0[q + 1]) + a1[q] * a1[q + 1]) + a2[q] * a2[q + 1]) + a3[
                q
            ] * a3[q + 1]
        return
    b0 = D[0, o + Wp : e + Wp]
    b1 = D[1, o + Wp : e + Wp]
    b2 = D[2, o + Wp : e + Wp]
    b3 = D[3, o + Wp : e + Wp]
    for q in range(w):
        x0, x1, x2, x3 = a0[q], a1[q], a2[q], a3[q]
        r0, r1, r2, r3 = a0[q + 1], a1[q + 1], a2[q + 1], a3[q + 1]
        u0, u1, u2, u3 = b0[q], b1[q], b2[q], b3[q]
        w0, w1, w2, w3 = b0[q + 1], b1[q + 1], b2[q + 1], b3[q + 1]
        c10[q] = (((c10[q] + x0 * u0) + x1 * u1) + x2 * u2) + x3 * u3
        c01[q] = (((c01[q] + x0 * r0) + x1 * r1) + x2 * r2) + x3 * r3
        c11[q] = (((c11[q] + x0 * w0) + x1 * w1) + x2 * w2) + x3 * w3
        c1m[q + 1] = (((c1m[q + 1] + r0 * u0) + r1 * u1) + r2 * u2) + r3 * u3


@numba.njit(cache=True, nogil=True)
def _pairs1(D, o, w, Wp, has_below, c10, c01, c11, c1m):  # pragma: no cover - compiled
    """:func:`_pairs4` for one frame (``D[0]``)."""
    a = D[0, o : o + w + 1]
    if not has_below:
        for q in range(w):
            c01[q] += a[q] * a[q + 1]
        return
    b = D[0, o + Wp : o + Wp + w + 1]
    for q in range(w):
        aq = a[q]
        c10[q] += aq * b[q]
        c01[q] += aq * a[q + 1]
        c11[q] += aq * b[q + 1]
        c1m[q + 1] += a[q + 1] * b[q]


@numba.njit(cache=True, nogil=True)
def _pairs(G, D, o, w, Wp, has_below, acc, oa):  # pragma: no cover - compiled
    """:func:`_pairs4` or :func:`_pairs1` into the co-moment sums ``acc[.., oa : oa + w + 1]``."""
    e = oa + w + 1
    c = (acc[_C10, oa:e], acc[_C01, oa:e], acc[_C11, oa:e], acc[_C1M, oa:e])
    if G == 4:
        _pairs4(D, o, w, Wp, has_below, *c)
    else:
        _pairs1(D, o, w, Wp, has_below, *c)


@numba.njit(cache=True, nogil=True)
def _chunk_frames(m):  # pragma: no cover - compiled
    """Frames per chunk of a band's footprint products (``m`` covered pixels): a multiple of 4
    between 4 and ``_AC_FRAMES`` that keeps them within ``_AC_BYTES``."""
    return max(4, min(_AC_FRAMES, _AC_BYTES // (8 * max(m, 1)) // 4 * 4))


@numba.njit(cache=True, nogil=True)
def _corr_update(
    y, Cc, cov, cptr, cidx, cdat, rstart, bands, CtT, bT, ft, acc, first
):  # pragma: no cover - compiled
    """Fold the frames of ``r = y - b @ f - A @ c`` (rows of ``R x Cc`` frames) into ``acc``.

    Bands of whole image rows outer (``bands``: first row of each band, then ``R``); frames
    inside, in chunks (their footprint products formed first, :func:`_footprint_products`)
    and groups of four; image rows inside that: each row's shifted residuals are formed once
    into the band's scratch ``D`` (rows ``Wp`` apart) and folded into the row's own sums,
    then one flat loop adds the band rows' neighbour products. A band's last row pairs with
    the next band's first row (its halo row, recomputed the same way). ``rstart``: each
    image row's first position in ``cov``. ``acc`` is ``(9, L)``, image row ``i`` at
    ``i * Wp`` (:func:`_padded_row`) in each plane. The loops index row slices from 0 only,
    which LLVM vectorises. ``first``: the state is fresh; frame 0 sets the shifts (a pass
    over all rows first, so that halo rows have theirs) and adds nothing.
    """
    n = y.shape[0]
    R = len(rstart) - 1
    Cw = -(-Cc // 8) * 8
    Wp = Cw + 8
    rows = 1
    for bi in range(len(bands) - 1):
        rows = max(rows, bands[bi + 1] - bands[bi])
    D = np.zeros((4, (rows + 1) * Wp + 8))
    ex = np.zeros(4 * Cw * (rows + 1))
    t0 = 0
    if first:
        AC = np.empty((len(cov), 1))
        _footprint_products(AC, 0, len(cov), cptr, cidx, cdat, CtT, 0, 1)
        for i in range(R):
            pa = i * Cc
            o = i * Wp
            r0 = rstart[i]
            r1 = rstart[i + 1]
            _fill_extra(ex, 1, 0, pa, Cc, r0, r1, 0, cov, AC, bT, ft, 0)
            _row_first(
                y,
                pa,
                Cc,
                ex,
                bT,
                ft,
                acc[_SH, o : o + Cc],
                acc[_S1, o : o + Cc],
                acc[_S2, o : o + Cc],
                acc[_LO, o : o + Cc],
                acc[_HI, o : o + Cc],
            )
            _clear_extra(ex, pa, r0, r1, cov)
        t0 = 1
    size = 1
    for bi in range(len(bands) - 1):
        m = rstart[min(bands[bi + 1] + 1, R)] - rstart[bands[bi]]
        size = max(size, m * _chunk_frames(m))
    ACbuf = np.empty(size)
    for bi in range(len(bands) - 1):
        i0 = bands[bi]
        i1 = bands[bi + 1]
        ie = min(i1 + 1, R)
        c0 = rstart[i0]
        m = rstart[ie] - c0
        ch = _chunk_frames(m)
        AC = ACbuf[: m * ch].reshape((m, ch))
        nbelow = min(i1, R - 1) - i0  # band rows with a row below
        # the band's footprint products, image row by row (a covered pixel's entries are
        # rewritten for every group of frames, the others stay 0)
        ex[: 4 * Cw * (ie - i0)] = 0.0
        for tc in range(t0, n, ch):
            h = min(ch, n - tc)
            _footprint_products(AC, c0, c0 + m, cptr, cidx, cdat, CtT, tc, h)
            t = tc
            while t < tc + h:
                G = 4 if t + 4 <= tc + h else 1
                for i in range(i0, ie):
                    pa = i * Cc
                    o = i * Wp
                    r0 = rstart[i]
                    r1 = rstart[i + 1]
                    exi = ex[4 * Cw * (i - i0) : 4 * Cw * (i - i0 + 1)]
                    _fill_extra(exi, G, t - tc, pa, Cc, r0, r1, c0, cov, AC, bT, ft, t)
                    st = (
                        acc[_SH, o : o + Cc],
                        acc[_S1, o : o + Cc],
                        acc[_S2, o : o + Cc],
                        acc[_LO, o : o + Cc],
                        acc[_HI, o : o + Cc],
                    )
                    od = (i - i0) * Wp
                    if G == 4:
                        _row4(y, t, pa, Cc, i < i1, exi, D, od, bT, ft, *st)
                    else:
                        _row1(y, t, pa, Cc, i < i1, exi, D, od, bT, ft, *st)
                if nbelow > 0:
                    _pairs(G, D, 0, nbelow * Wp, Wp, True, acc, i0 * Wp)
                if i1 == R:  # the frame's last row: no row below
                    _pairs(G, D, (R - 1 - i0) * Wp, Cw, Wp, False, acc, (R - 1) * Wp)
                t += G


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------


class CorrMomentsState:
    """Running per-pixel statistics and neighbour co-moments of 2D residual frames.

    The interface of :class:`~caiman_dask._moment_kernels.MomentsState` for frames whose
    ``npix`` pixels, in the operator's order, are a grid ``shape = (R, Cc)`` in C order:
    :meth:`update` folds in blocks of frames, :meth:`result` gives the statistics of
    :func:`caiman_dask._streaming.block_stats` with ``corr=True`` for that grid. For rows in
    Fortran order (a CaImAn memmap's frames read in their own order: ``shape`` is the movie's
    ``dims`` reversed), :func:`caiman_dask._streaming.stats_to_c_order` turns the result into
    the statistics of the C-ordered frames.

    Parameters
    ----------
    op : MomentsOperator
        Footprints and background from :func:`~caiman_dask._moment_kernels.prepare_moments`,
        pixels in the rows' order.
    shape : tuple of int
        ``(R, Cc)`` with ``R * Cc == op.npix``.

    Raises
    ------
    ShapeMismatchError
        If ``shape`` is not 2D or does not have ``op.npix`` pixels.

    Examples
    --------
    >>> import numpy as np, scipy.sparse
    >>> from caiman_dask._moment_kernels import prepare_moments
    >>> op = prepare_moments(scipy.sparse.csr_matrix((6, 1)), None)  # no footprints
    >>> state = CorrMomentsState(op, (2, 3))
    >>> y = np.array([[0.0, 1, 2, 3, 4, 5], [2, 3, 6, 3, 4, 5]])  # two frames of 2 x 3
    >>> state.update(y, np.zeros((2, 1)), None)
    >>> state.result()["comoment"][1]  # pixel (i, j) with (i, j + 1)
    array([[2., 4., 0.],
           [0., 0., 0.]])
    """

    def __init__(self, op: MomentsOperator, shape: tuple[int, int]) -> None:
        dims = tuple(int(d) for d in shape)
        if len(dims) != 2 or min(dims) < 1 or dims[0] * dims[1] != op.npix:
            raise ShapeMismatchError(
                f"shape={tuple(shape)!r} does not describe 2D frames of the operator's "
                f"{op.npix} pixels; pass (rows, columns) of the frames in the rows' pixel order"
            )
        R, Cc = dims
        self.op = op
        self.shape: tuple[int, int] = (R, Cc)
        self.n = 0
        self._Wp = _padded_row(Cc)[1]
        self._acc = np.zeros((9, _staggered(R * self._Wp)))
        self._rstart = np.searchsorted(op.cov, np.arange(R + 1) * Cc).astype(np.int64)
        rows = max(1, BAND_PIXELS // Cc)
        self._bands = np.append(np.arange(0, R, rows), R).astype(np.int64)
        self._K = int(op.cidx.max()) + 1 if len(op.cidx) else 0

    def update(self, y: np.ndarray, ct: np.ndarray, ft: np.ndarray | None) -> None:
        """Fold in rows ``y`` ``(n, npix)`` with traces ``ct`` ``(n, K)`` and background
        traces ``ft`` ``(n, nb)`` (or ``None``); pixels in the operator's order.

        float32 and float64 rows are read as they are (C-contiguous rows in place), anything
        else as float64, a block of frames at a time.

        Raises
        ------
        ShapeMismatchError
            If the shapes do not fit the operator.
        """
        n = self._check(y, ct, ft)
        if n == 0:
            return
        dt = np.float32 if y.dtype == np.float32 else np.float64
        step = n if (y.dtype == dt and y.flags.c_contiguous) else _COPY_FRAMES
        for s in range(0, n, step):
            e = min(n, s + step)
            self._fold(
                np.ascontiguousarray(y[s:e], dtype=dt), ct[s:e], None if ft is None else ft[s:e]
            )

    def _check(self, y: np.ndarray, ct: np.ndarray, ft: np.ndarray | None) -> int:
        """Number of frames of a valid ``update``; the kernel does no bounds checks."""
        op = self.op
        n = y.shape[0] if y.ndim == 2 else -1
        problems = []
        if y.ndim != 2 or y.shape[1] != op.npix:
            problems.append(f"y has shape {y.shape}, expected (n, {op.npix})")
        if ct.ndim != 2 or ct.shape[0] != n or ct.shape[1] < self._K:
            problems.append(f"ct has shape {ct.shape}, expected ({n}, K) with K >= {self._K}")
        if ft is not None and (ft.ndim != 2 or ft.shape[0] != n or ft.shape[1] > op.bT.shape[0]):
            problems.append(
                f"ft has shape {ft.shape}, expected ({n}, nb) with nb <= {op.bT.shape[0]}"
            )
        if problems:
            raise ShapeMismatchError(
                "; ".join(problems) + "; pass rows, traces and background traces of the same "
                "frames, pixels and components as the operator"
            )
        return n

    def _fold(self, y: np.ndarray, ct: np.ndarray, ft: np.ndarray | None) -> None:
        op = self.op
        n = y.shape[0]
        fpad = np.zeros((n, op.bT.shape[0]))
        if ft is not None:
            fpad[:, : ft.shape[1]] = ft
        _corr_update(
            y,
            self.shape[1],
            op.cov,
            op.cptr,
            op.cidx,
            op.cdat,
            self._rstart,
            self._bands,
            np.ascontiguousarray(np.asarray(ct, dtype=np.float64).T),
            op.bT,
            fpad,
            self._acc,
            self.n == 0,
        )
        self.n += n

    def result(self) -> dict[str, np.ndarray | int]:
        """The statistics so far, as fresh float64 arrays shaped ``shape``.

        ``n``, ``mean``, ``m2``, ``min``, ``max`` and ``comoment`` ``(4, R, Cc)`` ordered as
        :data:`~caiman_dask._streaming.CORR_OFFSETS_2D`, defined as in the
        :mod:`caiman_dask._streaming` module docstring (exactly 0 where the neighbour is
        outside the frame). With no frames: the empty statistics of ``block_stats`` (zeros,
        ``min`` ``+inf``, ``max`` ``-inf``; ``MomentsState`` gives zeros there).
        """
        n = self.n
        R, Cc = self.shape
        if n == 0:
            return {
                "n": 0,
                "mean": np.zeros((R, Cc)),
                "m2": np.zeros((R, Cc)),
                "min": np.full((R, Cc), np.inf),
                "max": np.full((R, Cc), -np.inf),
                "comoment": np.zeros((4, R, Cc)),
            }
        Wp = self._Wp
        acc = self._acc[:, : R * Wp].reshape(9, R, Wp)[:, :, :Cc]
        sh, s1, s2 = acc[_SH], acc[_S1], acc[_S2]
        m2 = s2 - s1 * s1 / n
        np.maximum(m2, 0.0, out=m2)
        com = np.zeros((4, R, Cc))
        for k, (di, dj) in enumerate(CORR_OFFSETS_2D):
            # x over the pixels whose neighbour x + (di, dj) is inside the frame
            xi = slice(0, R - di)
            xj = slice(max(0, -dj), Cc - max(0, dj))
            yj = slice(max(0, dj), Cc - max(0, -dj))
            com[k][xi, xj] = acc[_C10 + k][xi, xj] - s1[xi, xj] * s1[di:, yj] / n
        return {
            "n": n,
            "mean": sh + s1 / n,
            "m2": m2,
            "min": acc[_LO].copy(),
            "max": acc[_HI].copy(),
            "comoment": com,
        }
