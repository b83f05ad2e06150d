"""Moment kernels: per-pixel streaming statistics of residual frames; no dask inside.

:class:`MomentsState` folds blocks of residual frames ``y - b @ f - A @ c`` into per-pixel
running sums, minimum and maximum in one fused pass (the residuals are never stored);
:func:`residual_moments` is one block's worth. The footprints and background are prepared
once (:func:`prepare_moments`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse

__all__ = [
    "TILE",
    "MomentsOperator",
    "MomentsState",
    "fold",
    "prepare_moments",
    "residual_moments",
    "tile_products",
]


#: Pixels per tile of :func:`_moments_update` (tile accumulators stay in L2).
TILE = 2048
_TILE = TILE
#: Frames per call of :func:`_moments_update` (bounds its footprint-product buffer).
_SUB_FRAMES = 32


@numba.njit(cache=True, nogil=True, inline="always")
def tile_products(AC, cptr, cidx, cdat, CtT, c0, m):  # pragma: no cover - compiled
    """``AC[i, :] = Σ_j a_ij · C[j, :]`` over all frames for the ``m`` covered pixels of a tile
    (their CSR rows ``c0 : c0 + m``): multiply-adds contiguous over frames, no branches."""
    n = AC.shape[1]
    for i in range(m):
        row = AC[i]
        for t in range(n):
            row[t] = 0.0
        for j in range(cptr[c0 + i], cptr[c0 + i + 1]):
            a = cdat[j]
            ck = CtT[cidx[j]]
            for t in range(n):
                row[t] += a * ck[t]


@numba.njit(cache=True, nogil=True)
def _moments_update(
    y, cov, cptr, cidx, cdat, tstart, CtT, bT, ft, sh, s1, s2, lo, hi, first
):  # pragma: no cover - compiled
    """Fold the frames of ``r = y - b @ f - A @ c`` into per-pixel running statistics.

    Pixel tiles outer, frames inside, so a tile's background rows and accumulators stay in
    cache while the frames stream by; every input is read once and the residual block is never
    stored. Per tile, the footprint products of its covered pixels are formed first for all the
    frames at once (``AC[i, :] += a_ij * C[j, :]``: multiply-adds contiguous over frames, no
    data-dependent branches). Each frame's products go into a tile-sized buffer (zero at
    uncovered pixels; background rows beyond the first two are added there too), and one
    fused pass per four frames updates residual, shifted sums, minimum and maximum. ``bT`` has at
    least two rows (zero rows when the model has fewer). Sums are of ``r - sh`` with ``sh``
    the pixel's first residual (shifted data, exactly 0 for a constant pixel), in float64.

    ``first``: the state is uninitialised and is set from frame 0 of ``y``.
    """
    n, P = y.shape
    tile = _TILE
    ex = np.empty((4, tile))
    mt = 1
    for ti in range(len(tstart) - 1):
        mt = max(mt, tstart[ti + 1] - tstart[ti])
    AC = np.empty((mt, n))
    for ti in range(len(tstart) - 1):
        p0 = ti * tile
        p1 = min(P, p0 + tile)
        w = p1 - p0
        c0 = tstart[ti]
        m = tstart[ti + 1] - c0
        tile_products(AC, cptr, cidx, cdat, CtT, c0, m)
        cov_t = cov[c0 : c0 + m]
        b0 = bT[0, p0:p1]
        b1 = bT[1, p0:p1]
        sh_t = sh[p0:p1]
        s1_t = s1[p0:p1]
        s2_t = s2[p0:p1]
        lo_t = lo[p0:p1]
        hi_t = hi[p0:p1]
        for g in range(4):
            e = ex[g]
            for q in range(w):
                e[q] = 0.0
        t = 0
        while t < n:
            if t + 4 <= n and not (first and t == 0):
                # four frames per sweep: the accumulators are loaded and stored once per four
                # frames and updated in registers in frame order (the same arithmetic, in the same
                # order, as one frame at a time)
                for g in range(4):
                    _fill_extra(ex[g], bT, ft, AC, cov_t, p0, p1, t + g)
                ya = y[t, p0:p1]
                yb = y[t + 1, p0:p1]
                yc = y[t + 2, p0:p1]
                yd = y[t + 3, p0:p1]
                ea = ex[0]
                eb = ex[1]
                ec = ex[2]
                ed = ex[3]
                fa0, fa1 = ft[t, 0], ft[t, 1]
                fb0, fb1 = ft[t + 1, 0], ft[t + 1, 1]
                fc0, fc1 = ft[t + 2, 0], ft[t + 2, 1]
                fd0, fd1 = ft[t + 3, 0], ft[t + 3, 1]
                for q in range(w):
                    bq0 = b0[q]
                    bq1 = b1[q]
                    shq = sh_t[q]
                    u1 = s1_t[q]
                    u2 = s2_t[q]
                    mn = lo_t[q]
                    mx = hi_t[q]
                    v = ya[q] - (bq0 * fa0 + bq1 * fa1) - ea[q]
                    u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
                    v = yb[q] - (bq0 * fb0 + bq1 * fb1) - eb[q]
                    u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
                    v = yc[q] - (bq0 * fc0 + bq1 * fc1) - ec[q]
                    u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
                    v = yd[q] - (bq0 * fd0 + bq1 * fd1) - ed[q]
                    u1, u2, mn, mx = fold(v, shq, u1, u2, mn, mx)
                    s1_t[q] = u1
                    s2_t[q] = u2
                    lo_t[q] = mn
                    hi_t[q] = mx
                t += 4
                continue
            _fill_extra(ex[0], bT, ft, AC, cov_t, p0, p1, t)
            e = ex[0]
            yt = y[t, p0:p1]
            f0 = ft[t, 0]
            f1 = ft[t, 1]
            if first and t == 0:
                for q in range(w):
                    v = yt[q] - (b0[q] * f0 + b1[q] * f1) - e[q]
                    sh_t[q] = v
                    lo_t[q] = v
                    hi_t[q] = v
                    s1_t[q] = 0.0
                    s2_t[q] = 0.0
            else:
                for q in range(w):
                    v = yt[q] - (b0[q] * f0 + b1[q] * f1) - e[q]
                    s1_t[q], s2_t[q], lo_t[q], hi_t[q] = fold(
                        v, sh_t[q], s1_t[q], s2_t[q], lo_t[q], hi_t[q]
                    )
            t += 1


@numba.njit(cache=True, nogil=True, inline="always")
def fold(v, sh, s1, s2, lo, hi):  # pragma: no cover - compiled
    """One value ``v`` folded into a pixel's shifted sums (shift ``sh``), minimum and maximum
    (the fused kernels' one update rule: :mod:`._ring_kernels`, :mod:`._corr_kernels`)."""
    d = v - sh
    return s1 + d, s2 + d * d, (v if v < lo else lo), (v if v > hi else hi)


@numba.njit(cache=True, nogil=True, inline="always")
def _fill_extra(e, bT, ft, AC, cov_t, p0, p1, t):  # pragma: no cover - compiled
    """``e`` = frame ``t``'s footprint products at the covered pixels of tile ``p0:p1`` (plus
    background rows beyond the first two); ``e`` is zero elsewhere and stays so."""
    nb = bT.shape[0]
    m = len(cov_t)
    if nb > 2:
        w = p1 - p0
        for q in range(w):
            e[q] = 0.0
        for k in range(2, nb):
            bk = bT[k, p0:p1]
            fk = ft[t, k]
            for q in range(w):
                e[q] += bk[q] * fk
        for i in range(m):
            e[cov_t[i] - p0] += AC[i, t]
    else:
        for i in range(m):
            e[cov_t[i] - p0] = AC[i, t]


@dataclass(frozen=True)
class MomentsOperator:
    """Footprints and background prepared once for :class:`MomentsState`.

    The footprints are kept as a CSR matrix of only the pixels some footprint covers.
    """

    cov: np.ndarray  # int64: the covered pixels, increasing
    cptr: np.ndarray  # int64: CSR row pointers over ``cov``
    cidx: np.ndarray  # uint32: each entry's component
    cdat: np.ndarray  # float64: entry values
    tstart: np.ndarray  # int64: per pixel tile, its first position in ``cov`` (+ the end)
    bT: np.ndarray  # (nb, npix) float64 background, pixels contiguous
    npix: int


def prepare_moments(A: scipy.sparse.spmatrix, b: np.ndarray | None) -> MomentsOperator:
    """Prepare ``A`` (npix x K, any sparse format) and ``b`` (npix x nb) for the fused pass."""
    A = scipy.sparse.csr_matrix(A)
    A.sum_duplicates()
    P = A.shape[0]
    counts = np.diff(A.indptr)
    cov = np.flatnonzero(counts).astype(np.int64)
    cptr = np.zeros(len(cov) + 1, np.int64)
    np.cumsum(counts[cov], out=cptr[1:])
    edges = np.arange(0, P + _TILE, _TILE)
    edges[-1] = P
    return MomentsOperator(
        cov=cov,
        cptr=cptr,
        cidx=A.indices.astype(np.uint32),
        cdat=np.asarray(A.data, dtype=np.float64),
        tstart=np.searchsorted(cov, edges).astype(np.int64),
        bT=_background_rows(b, P),
        npix=P,
    )


def _background_rows(b: np.ndarray | None, P: int) -> np.ndarray:
    """``b.T`` as float64 ``(max(nb, 2), P)``, padded with zero rows (the kernel's fast path
    reads two rows; ``y - (0·f0 + 0·f1)`` is exactly ``y``)."""
    nb = 0 if b is None else np.asarray(b).shape[1]
    bT = np.zeros((max(nb, 2), P))
    if nb:
        bT[:nb] = np.asarray(b, dtype=np.float64).T
    return bT


class MomentsState:
    """Running per-pixel statistics of residual frames, folded in block by block.

    ``update`` takes consecutive (or any) blocks of frames; ``result`` gives the keys of
    :func:`caiman_dask._streaming.block_stats` (``corr=False``): ``n``, ``mean``, ``m2``,
    ``min``, ``max``.
    """

    def __init__(self, op: MomentsOperator) -> None:
        self.op = op
        self.n = 0
        P = op.npix
        self._acc = np.empty((5, P))  # shift, sum, sum of squares, min, max

    def update(self, y: np.ndarray, ct: np.ndarray, ft: np.ndarray | None) -> None:
        """Fold in rows ``y`` ``(n, npix)`` (any float dtype) with traces ``ct`` ``(n, K)``
        and background traces ``ft`` ``(n, nb)``; pixels in the operator's order."""
        op = self.op
        n = y.shape[0]
        sh, s1, s2, lo, hi = self._acc
        for s in range(0, n, _SUB_FRAMES):
            e = min(n, s + _SUB_FRAMES)
            _moments_update(
                np.ascontiguousarray(y[s:e]),
                op.cov,
                op.cptr,
                op.cidx,
                op.cdat,
                op.tstart,
                np.ascontiguousarray(np.asarray(ct[s:e], dtype=np.float64).T),
                op.bT,
                self._ft(ft, s, e),
                sh,
                s1,
                s2,
                lo,
                hi,
                self.n == 0,
            )
            self.n += e - s

    def _ft(self, ft: np.ndarray | None, s: int, e: int) -> np.ndarray:
        """Background traces of frames ``s:e``, zero-padded to the operator's rows."""
        out = np.zeros((e - s, self.op.bT.shape[0]))
        if ft is not None:
            out[:, : ft.shape[1]] = ft[s:e]
        return out

    def result(self) -> dict[str, np.ndarray | int]:
        """The statistics so far (fresh arrays); zeros / ±inf-free empties when ``n == 0``."""
        n = self.n
        sh, s1, s2, lo, hi = self._acc
        if n == 0:
            P = self.op.npix
            return {"n": 0, **{k: np.zeros(P) for k in ("mean", "m2", "min", "max")}}
        m2 = s2 - s1 * s1 / n
        np.maximum(m2, 0.0, out=m2)
        return {"n": n, "mean": sh + s1 / n, "m2": m2, "min": lo.copy(), "max": hi.copy()}


def residual_moments(
    y: np.ndarray, op: MomentsOperator, ct: np.ndarray, ft: np.ndarray | None
) -> dict[str, np.ndarray | int]:
    """Streaming statistics (``n``, ``mean``, ``m2``, ``min``, ``max``) of residual rows.

    ``y`` is ``(n, npix)`` (any float dtype), ``ct`` ``(n, K)``, ``ft`` ``(n, nb)``; pixels in
    the operator's order. The result has the keys of
    :func:`caiman_dask._streaming.block_stats` (``corr=False``).
    """
    state = MomentsState(op)
    state.update(y, ct, ft)
    return state.result()
