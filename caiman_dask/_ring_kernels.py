"""Ring-model kernels: the CNMF-E background of blocks of frames and its statistics; no dask.

CaImAn's ring background of frame ``t`` is ``B_t = b0 + U(W·(D·Y_t − (D·A)·C_t − D·b0))``
(:mod:`caiman_dask._ring`). Everything here works on frames in one pixel order (C, or the
Fortran order of CaImAn's frame-major memmaps, which is the C order of the reversed shape), on
a frame viewed as ``(rows, cols)`` with ``cols`` its last axis in that order:

- :func:`ring_inputs`: ``X = D·Y − (D·A)·C − D·b0`` for a block of frames, laid out
  ``(P_ds, n)`` for the sparse product (each ``ssub``-block of the movie summed in float64 as
  the frame is read once; the footprint term added from ``D·A`` prepared once);
- :func:`spmm`: ``Z = W·X``, rows ``r0:r1`` (row ranges can run on several threads; each row
  sums its non-zeros in order, in ``X``'s dtype, as SciPy's ``csr_matvecs`` does: the same
  numbers);
- :func:`combine`: frames ``out = b0 + U(Z)`` or ``out − (b0 + U(Z))`` in C pixel order;
- :func:`ring_fold`: per-pixel running statistics of ``cy·Y + ca·A·C + cr·B`` for several
  such movies at once, from the movie's block (read once), without forming any frame;
- :func:`ds_moments`: the statistics of ``Z`` itself (per downsampled pixel), from which the
  background's own statistics follow exactly (``B = b0 + U(Z)``).
"""

from __future__ import annotations

import numba
import numpy as np

from ._moment_kernels import TILE, fold, tile_products

__all__ = ["combine", "ds_moments", "ring_fold", "ring_inputs", "spmm"]


@numba.njit(cache=True, nogil=True)
def ring_inputs(
    y,
    row_ptr,
    row_idx,
    s,
    dcols,
    inv,
    b0_ds,
    da_rstart,
    da_rows,
    da_ptr,
    da_idx,
    da_val,
    C,
    out,
    qr0,
    qr1,
):  # pragma: no cover - compiled
    """``out[q, t] = mean of Y_t over block q − (D·A·C)[q, t] − (D·b0)[q]`` in ``out``'s dtype.

    ``y`` ``(n, rows, cols)``, C-contiguous frames (any real dtype); ``row_ptr`` /
    ``row_idx``: the frame rows of each downsampled row (CSR); a frame row's column ``c`` falls
    in downsampled column ``c // s``; ``inv`` ``(P_ds,)``: 1 / pixels per block; ``da_*``: CSR
    of ``D·A`` ``(P_ds, K)``, with ``da_rows`` its non-empty rows and ``da_rstart`` where each
    downsampled row's start in them; ``C`` ``(K, n)`` float64; ``out`` ``(P_ds, n)``. Sums and the
    subtraction are float64, rounded once. Downsampled rows ``qr0:qr1`` (independent: threads
    can share a frame), frames inside, so a row's accumulators stay in cache and ``out`` is
    written once, contiguously.
    """
    n, _, cols = y.shape
    buf = np.empty((n, dcols))
    half = cols // 2
    for qr in range(qr0, qr1):
        q0 = qr * dcols
        k0 = row_ptr[qr]
        if s == 2 and row_ptr[qr + 1] - k0 == 2:  # both rows of the block at once
            ra = row_idx[k0]
            rb = row_idx[k0 + 1]
            for t in range(n):
                ya = y[t, ra]
                yb = y[t, rb]
                bt = buf[t]
                for c in range(half):
                    pa = np.float64(ya[2 * c]) + np.float64(ya[2 * c + 1])
                    bt[c] = pa + (np.float64(yb[2 * c]) + np.float64(yb[2 * c + 1]))
                if cols % 2:
                    bt[half] = np.float64(ya[cols - 1]) + np.float64(yb[cols - 1])
                for c in range(dcols):
                    bt[c] = bt[c] * inv[q0 + c] - b0_ds[q0 + c]
        else:
            _rows_sums(y, buf, row_ptr, row_idx, qr, q0, s, dcols, inv, b0_ds)
        for ii in range(da_rstart[qr], da_rstart[qr + 1]):  # blocks some footprint covers
            q = da_rows[ii]
            c = q - q0
            for j in range(da_ptr[q], da_ptr[q + 1]):
                a = da_val[j]
                i = da_idx[j]
                for t in range(n):
                    buf[t, c] -= a * C[i, t]
        if n == 1:  # (a contiguous copy: it vectorises)
            b0r = buf[0]
            for c in range(dcols):
                out[q0 + c, 0] = b0r[c]
        else:
            for c in range(dcols):
                for t in range(n):
                    out[q0 + c, t] = buf[t, c]


@numba.njit(cache=True, nogil=True, inline="always")
def _rows_sums(y, buf, row_ptr, row_idx, qr, q0, s, dcols, inv, b0_ds):  # pragma: no cover
    """The general case of :func:`ring_inputs`: any block size, any number of rows per
    block (3D frames, ragged edges), added row by row."""
    n, _, cols = y.shape
    half = cols // 2
    for t in range(n):
        for c in range(dcols):
            buf[t, c] = 0.0
        for k in range(row_ptr[qr], row_ptr[qr + 1]):
            r = row_idx[k]
            if s == 2:
                for c in range(half):
                    buf[t, c] += np.float64(y[t, r, 2 * c]) + np.float64(y[t, r, 2 * c + 1])
                if cols % 2:
                    buf[t, half] += np.float64(y[t, r, cols - 1])
            else:
                for cq in range(dcols):
                    acc = 0.0
                    for c in range(cq * s, min(cols, cq * s + s)):
                        acc += np.float64(y[t, r, c])
                    buf[t, cq] += acc
        for c in range(dcols):
            buf[t, c] = buf[t, c] * inv[q0 + c] - b0_ds[q0 + c]


@numba.njit(cache=True, nogil=True)
def spmm(indptr, indices, data, X, Z, r0, r1):  # pragma: no cover - compiled
    """``Z[r] = Σ_k data[k]·X[indices[k]]`` for rows ``r0:r1`` of a CSR matrix (``X``, ``Z``:
    ``(P_ds, n)``), each row's non-zeros added in order in ``Z``'s dtype."""
    n = X.shape[1]
    if n == 1:
        for r in range(r0, r1):
            Z[r, 0] = 0.0
            acc = Z[r, 0]
            for k in range(indptr[r], indptr[r + 1]):
                acc += data[k] * X[indices[k], 0]
            Z[r, 0] = acc
        return
    for r in range(r0, r1):
        for t in range(n):
            Z[r, t] = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            w = data[k]
            j = indices[k]
            for t in range(n):
                Z[r, t] += w * X[j, t]


@numba.njit(cache=True, nogil=True)
def combine(out, b0, Z, row_ptr, row_idx, s, dcols, subtract, qr0, qr1):  # pragma: no cover
    """C-ordered frames ``out`` ``(n, rows·cols)``: ``B = b0 + U(Z)`` (rounded to ``out``'s
    dtype) written (``subtract`` false) or subtracted from ``out``; ``Z`` ``(P_ds, n)`` in C
    order of the grid, ``row_ptr`` / ``row_idx`` the C grid's rows (as :func:`ring_inputs`).

    Downsampled rows ``qr0:qr1`` (independent), frames inside: a row's values of ``Z`` are
    first laid out frame by frame (a small transpose), so each frame reads them contiguously."""
    n, P = out.shape
    cols = P // row_idx.shape[0]
    zt = np.empty((n, dcols), Z.dtype)
    for qr in range(qr0, qr1):
        q0 = qr * dcols
        for c in range(dcols):
            for t in range(n):
                zt[t, c] = Z[q0 + c, t]
        for t in range(n):
            zr = zt[t]
            for k in range(row_ptr[qr], row_ptr[qr + 1]):
                p0 = row_idx[k] * cols
                o = out[t, p0 : p0 + cols]
                bp = b0[p0 : p0 + cols]
                if s == 2:  # (a shift, not a division: the loop vectorises)
                    if subtract:
                        for c in range(cols):
                            o[c] = o[c] - (bp[c] + zr[c >> 1])
                    else:
                        for c in range(cols):
                            o[c] = bp[c] + zr[c >> 1]
                    continue
                for cq in range(dcols):
                    z = zr[cq]
                    a = p0 + cq * s
                    e = min(p0 + cols, a + s)
                    if subtract:
                        for p in range(a, e):
                            out[t, p] = out[t, p] - (b0[p] + z)
                    else:
                        for p in range(a, e):
                            out[t, p] = b0[p] + z


@numba.njit(cache=True, nogil=True, inline="always")
def _value(y, e, b, cy, ca, cr):  # pragma: no cover - compiled
    """``(cy·y + ca·ac) + cr·B`` in float64 (no branch: the caller passes zero frames or no
    footprints for a zero coefficient, so ``0·inf`` never happens)."""
    return (cy * np.float64(y) + ca * e) + cr * np.float64(b)


@numba.njit(cache=True, nogil=True)
def ring_fold(
    y, cov, cptr, cidx, cdat, tstart, CtT, b0, Z, qmap, cy, ca, cr, sh, s1, s2, lo, hi, first
):  # pragma: no cover - compiled
    """Fold the frames of ``v = (cy·Y + ca·A·C) + cr·B`` into per-pixel shifted sums, sums of
    squares, minimum and maximum (``sh``, ``s1``, ``s2``, ``lo``, ``hi``, float64), with
    ``B = b0 + Z[qmap]`` in ``b0``'s dtype and ``v`` in float64.

    ``y`` ``(n, P)`` frames in the operator's pixel order; ``cov`` ... ``tstart``: the
    footprints over the pixels they cover (as :class:`~._moment_kernels.MomentsOperator`),
    ``CtT`` ``(K, n)`` float64; ``Z`` ``(P_ds, n)`` (the grid in the pixels' order). Pixel
    tiles outer, frames inside, four at a time: a tile's accumulators are loaded and stored
    once per four frames while the frames stream by; the block is read once and no frame is
    formed. ``first``: the statistics are empty and start at frame 0.
    """
    n, P = y.shape
    mt = 1
    for ti in range(len(tstart) - 1):
        mt = max(mt, tstart[ti + 1] - tstart[ti])
    AC = np.empty((mt, n))
    ex = np.zeros((4, TILE))
    bb = np.empty((4, TILE), b0.dtype)
    for ti in range(len(tstart) - 1):
        p0 = ti * TILE
        p1 = min(P, p0 + TILE)
        c0 = tstart[ti]
        m = tstart[ti + 1] - c0
        tile_products(AC, cptr, cidx, cdat, CtT, c0, m)
        t = 0
        if first:  # frame 0 sets the shift, minimum and maximum
            for i in range(m):
                ex[0, cov[c0 + i] - p0] = AC[i, 0]
            y0 = y[0]
            e0 = ex[0]
            for p in range(p0, p1):
                v = _value(y0[p], e0[p - p0], b0[p] + Z[qmap[p], 0], cy, ca, cr)
                sh[p] = v
                s1[p] = 0.0
                s2[p] = 0.0
                lo[p] = v
                hi[p] = v
            for i in range(m):
                ex[0, cov[c0 + i] - p0] = 0.0
            t = 1
        while t < n:
            g = min(4, n - t)
            for k in range(g):
                for i in range(m):
                    ex[k, cov[c0 + i] - p0] = AC[i, t + k]
            if g == 4:
                ya = y[t, p0:p1]
                yb = y[t + 1, p0:p1]
                yc = y[t + 2, p0:p1]
                yd = y[t + 3, p0:p1]
                ea = ex[0]
                eb = ex[1]
                ec = ex[2]
                ed = ex[3]
                qt = qmap[p0:p1]
                bt = b0[p0:p1]
                w = p1 - p0
                for r in range(w):  # the background of the four frames (a gather, apart)
                    q = qt[r]
                    bp = bt[r]
                    bb[0, r] = bp + Z[q, t]
                    bb[1, r] = bp + Z[q, t + 1]
                    bb[2, r] = bp + Z[q, t + 2]
                    bb[3, r] = bp + Z[q, t + 3]
                ba = bb[0]
                bbb = bb[1]
                bc = bb[2]
                bd = bb[3]
                sh_t = sh[p0:p1]
                s1_t = s1[p0:p1]
                s2_t = s2[p0:p1]
                lo_t = lo[p0:p1]
                hi_t = hi[p0:p1]
                for r in range(w):
                    shp = sh_t[r]
                    u1 = s1_t[r]
                    u2 = s2_t[r]
                    mn = lo_t[r]
                    mx = hi_t[r]
                    v = _value(ya[r], ea[r], ba[r], cy, ca, cr)
                    u1, u2, mn, mx = fold(v, shp, u1, u2, mn, mx)
                    v = _value(yb[r], eb[r], bbb[r], cy, ca, cr)
                    u1, u2, mn, mx = fold(v, shp, u1, u2, mn, mx)
                    v = _value(yc[r], ec[r], bc[r], cy, ca, cr)
                    u1, u2, mn, mx = fold(v, shp, u1, u2, mn, mx)
                    v = _value(yd[r], ed[r], bd[r], cy, ca, cr)
                    u1, u2, mn, mx = fold(v, shp, u1, u2, mn, mx)
                    s1_t[r] = u1
                    s2_t[r] = u2
                    lo_t[r] = mn
                    hi_t[r] = mx
            else:
                for k in range(g):
                    yt = y[t + k]
                    e = ex[k]
                    for p in range(p0, p1):
                        v = _value(yt[p], e[p - p0], b0[p] + Z[qmap[p], t + k], cy, ca, cr)
                        s1[p], s2[p], lo[p], hi[p] = fold(v, sh[p], s1[p], s2[p], lo[p], hi[p])
            for k in range(g):
                for i in range(m):
                    ex[k, cov[c0 + i] - p0] = 0.0
            t += g


@numba.njit(cache=True, nogil=True)
def ds_moments(Z, mom, lo, hi):  # pragma: no cover - compiled
    """Per row of ``Z`` ``(P_ds, n)``: the mean and M2 (float64, ``mom`` ``(2, P_ds)``) and
    the minimum and maximum (in ``Z``'s dtype: ``lo``, ``hi``) over its ``n`` values.

    Sums of values shifted by each row's first value, eight rows at a time (eight independent
    accumulators: the loop over rows vectorises)."""
    Pds, n = Z.shape
    sh = np.empty(8)
    s1 = np.empty(8)
    s2 = np.empty(8)
    mn = np.empty(8, Z.dtype)
    mx = np.empty(8, Z.dtype)
    for q0 in range(0, Pds, 8):
        m = min(8, Pds - q0)
        for r in range(8):
            q = q0 + (r if r < m else 0)
            sh[r] = np.float64(Z[q, 0])
            s1[r] = 0.0
            s2[r] = 0.0
            mn[r] = Z[q, 0]
            mx[r] = Z[q, 0]
        for t in range(1, n):
            for r in range(8):
                z = Z[q0 + (r if r < m else 0), t]
                d = np.float64(z) - sh[r]
                s1[r] += d
                s2[r] += d * d
                mn[r] = z if z < mn[r] else mn[r]
                mx[r] = z if z > mx[r] else mx[r]
        for r in range(m):
            q = q0 + r
            mom[0, q] = sh[r] + s1[r] / n
            v = s2[r] - s1[r] * s1[r] / n
            mom[1, q] = v if v > 0.0 else 0.0
            lo[q] = mn[r]
            hi[q] = mx[r]


@numba.njit(cache=True, nogil=True)
def expand_background(mom, lo, hi, own, b0, cr, out):  # pragma: no cover - compiled
    """Per-pixel statistics of ``cr·B``, ``B = b0 + U(Z)``, from :func:`ds_moments` of ``Z``:
    ``out`` ``(4, P)`` float64 mean, M2, min, max. The extremes are the frames' own:
    ``fl(cr·fl(b0 + z))`` is monotone in ``z`` (``b0``'s dtype), swapped for ``cr < 0``."""
    P = len(own)
    c2 = cr * cr
    for p in range(P):
        q = own[p]
        out[0, p] = cr * (np.float64(b0[p]) + mom[0, q])
        out[1, p] = c2 * mom[1, q]
        a = b0[p] + lo[q]
        b = b0[p] + hi[q]
        if cr != 1.0:
            a = a * cr
            b = b * cr
        if cr < 0.0:
            a, b = b, a
        out[2, p] = a
        out[3, p] = b
