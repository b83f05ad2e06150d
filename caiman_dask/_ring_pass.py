"""Statistics of ring-model movies from one block of the movie, the background computed once.

A movie of a CNMF-E model whose factored part is empty or ``c·A·C`` is
``cy·Y + ca·A·C + cr·B`` with ``B = b0 + U(Z)``, ``Z = W·(D·Y − (D·A)·C − D·b0)``
(:mod:`caiman_dask._ring`): the background ``cd.rcb``, the residuals ``Y − A·C − B``,
``Y − B``, ``A·C + B``... For a block of frames :func:`ring_block_stats` computes ``Z`` once
(the sparse product, the one costly step) and then the statistics of every such movie asked
for:

- the background alone (``cy = ca = 0``) from ``Z`` on the downsampled grid: per pixel
  ``mean = cr·(b0 + mean(Z))``, ``M2 = cr²·M2(Z)``, and ``min`` / ``max`` are the frames' own
  (``b0 + z`` rounds monotonically in ``z``, so the smallest frame value is
  ``fl(b0 + min z)``);
- the others by :func:`~._ring_kernels.ring_fold`, which reads the block once and forms no
  frame.

The dask pass (:mod:`caiman_dask._statistics`) and the streaming accumulators
(:mod:`caiman_dask._accumulate`) both call it on the same canonical blocks, so their results
agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._description import Description
from ._frame_kernels import frame_rows
from ._moment_kernels import TILE, MomentsOperator
from ._ring import RingLayout, RingOperator, ring_x, ring_z_own
from ._ring_kernels import ds_moments, expand_background, ring_fold
from ._streaming import stats_to_c_order

__all__ = [
    "Coefficients",
    "ring_block_stats",
    "ring_block_stats_as_stored",
    "ring_coefficients",
    "to_c_order",
]

#: ``(cy, ca, cr)``: the movie ``cy·Y + ca·A·C + cr·B``.
Coefficients = tuple[float, float, float]


def _no_footprints(P: int) -> MomentsOperator:
    """Footprints covering no pixel (for a movie without the ``A·C`` term)."""
    tiles = -(-P // TILE)
    return MomentsOperator(
        cov=np.zeros(0, np.int64),
        cptr=np.zeros(1, np.int64),
        cidx=np.zeros(0, np.uint32),
        cdat=np.zeros(0),
        tstart=np.zeros(tiles + 1, np.int64),
        bT=np.zeros((2, 0)),
        npix=P,
    )


def ring_coefficients(desc: Description) -> Coefficients | None:
    """``(cy, ca, cr)`` when ``desc`` is ``cy·Y + ca·A·C + cr·B`` with a ring background
    (``cr ≠ 0``), else ``None``."""
    if not desc.ring:
        return None
    if not desc.factors:
        return (desc.y, 0.0, desc.ring)
    c = desc.uniform_rcm()
    return None if c is None else (desc.y, c, desc.ring)


def ring_block_stats(
    y: np.ndarray, op: RingOperator, C: np.ndarray, coefs: Sequence[Coefficients]
) -> list[dict[str, Any]]:
    """Statistics (``n``, ``mean``, ``m2``, ``min``, ``max`` per pixel, C order, float64) of
    each movie ``coefs[j]`` over the block of frames ``y`` ``(n, *dims)`` (any layout) with the
    traces ``C`` ``(K, n)`` of all components."""
    fortran, stats = ring_block_stats_as_stored(y, op, C, coefs)
    return [to_c_order(x, op.dims) for x in stats] if fortran else stats


def to_c_order(stats: dict[str, Any], dims: tuple[int, ...]) -> dict[str, Any]:
    """Statistics of frames stored in Fortran order (shaped ``dims[::-1]``) in C order."""
    return stats_to_c_order(stats, dims)


def ring_block_stats_as_stored(
    y: np.ndarray, op: RingOperator, C: np.ndarray, coefs: Sequence[Coefficients]
) -> tuple[bool, list[dict[str, Any]]]:
    """:func:`ring_block_stats` in the pixel order the block is stored in: ``(True, stats
    shaped dims[::-1])`` for Fortran-ordered frames (a CaImAn memmap), so that many blocks can
    be merged before one reordering (:func:`to_c_order`; merging is per pixel, so the order of
    the two steps does not change a bit)."""
    rows, fortran = frame_rows(y)
    L = op.layout(fortran)
    n = rows.shape[0]
    C = np.asarray(C, op.dtype)  # (the traces as every block of the movie takes them)
    Z = ring_z_own(L, ring_x(L, rows, C.T, op.dtype))
    out: list[dict[str, Any] | None] = [None] * len(coefs)
    general = [j for j, (cy, ca, _) in enumerate(coefs) if cy or ca]
    if general:
        mo = L.moments
        CtT = np.ascontiguousarray(np.asarray(C, np.float64))
        y_rows = rows if rows.dtype.kind in "fiu" and rows.dtype.isnative else rows.astype(op.dtype)
        acc = np.empty((5, op.n_pixels))
        for j in general:
            cy, ca, cr = coefs[j]
            # (a zero coefficient's term is left out: zero frames, or no footprints)
            yj = y_rows if cy else np.broadcast_to(np.zeros((), y_rows.dtype), y_rows.shape)
            fp = mo if ca else _no_footprints(op.n_pixels)
            with np.errstate(invalid="ignore", over="ignore"):
                sh, s1, s2, lo, hi = acc
                ring_fold(yj, fp.cov, fp.cptr, fp.cidx, fp.cdat, fp.tstart, CtT, L.b0, Z,
                          L.own, cy, ca, cr, sh, s1, s2, lo, hi, True)  # fmt: skip
                m2 = s2 - s1 * s1 / n
                np.maximum(m2, 0.0, out=m2)
                stats = {"n": n, "mean": sh + s1 / n, "m2": m2, "min": lo.copy(), "max": hi.copy()}
            out[j] = {k: v if k == "n" else np.reshape(v, L.dims) for k, v in stats.items()}
    pure = [j for j in range(len(coefs)) if out[j] is None]
    if pure:
        out_pure = _background_stats(op, L, Z, n, [coefs[j][2] for j in pure])
        for j, s in zip(pure, out_pure, strict=True):
            out[j] = s
    return fortran, [s for s in out if s is not None]


def _background_stats(
    op: RingOperator, L: RingLayout, Z: np.ndarray, n: int, scales: Sequence[float]
) -> list[dict[str, Any]]:
    """Statistics of ``cr·B`` for each ``cr`` in ``scales``, from ``Z`` (``L``'s grid), in
    ``L``'s pixel order (:func:`~._ring_kernels.expand_background`)."""
    Pds = Z.shape[0]
    mom = np.empty((2, Pds))
    lo = np.empty(Pds, Z.dtype)
    hi = np.empty(Pds, Z.dtype)
    ds_moments(Z, mom, lo, hi)
    res = []
    for cr in scales:
        out = np.empty((4, op.n_pixels))
        expand_background(mom, lo, hi, L.own, L.b0, op.dtype.type(cr), out)
        stats = {"n": n, "mean": out[0], "m2": out[1], "min": out[2], "max": out[3]}
        res.append({k: v if k == "n" else np.reshape(v, L.dims) for k, v in stats.items()})
    return res
