"""Summary-image kernels: CaImAn's CNMF-E filter, peak-to-noise and correlation pieces; no dask.

Everything :func:`caiman_dask.pnr_images` computes per block lives here as plain functions of
NumPy arrays (the graph is built in :mod:`caiman_dask._summary`):

- :func:`pnr_kernel` builds CaImAn's spatial filter for ``gSig`` (the float32 kernel of
  ``correlation_pnr``, value for value);
- :func:`correlate_frames` applies it to frames (correlation, replicated borders), using the
  kernel's four-fold symmetry: each output pixel costs about a quarter of its taps;
- :func:`sum_frames` sums frames over time and counts non-finite values;
- :func:`noise_frames` / :func:`noise_band` / :func:`band_noise` give CaImAn's noise level
  (``get_noise_fft``: the frames it samples, the frequency band, the mean power);
- :func:`corr_moments` filters a block, thresholds it at 3 noise levels and returns the
  per-pixel moments and neighbour co-moments of the thresholded movie, centred, ready for
  :func:`merge_moments` (Chan's exact merge) and :func:`finish` (the two images).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import scipy.fft

from . import _buffers

__all__ = [
    "MAX_NOISE_FRAMES",
    "THRESHOLD",
    "Kernel",
    "band_noise",
    "corr_moments",
    "correlate_frames",
    "finish",
    "merge_moments",
    "noise_band",
    "noise_frames",
    "pnr_kernel",
    "stored_orientation",
    "sum_frames",
]

#: CaImAn's ``max_num_samples_fft``: longer movies estimate the noise from three 1024-frame
#: segments (:func:`noise_frames`).
MAX_NOISE_FRAMES = 3072
#: CaImAn's threshold, in noise levels, below which the filtered movie is zeroed before the
#: correlation image (``tmp_data[tmp_data < 3] = 0`` in ``correlation_pnr``).
THRESHOLD = 3.0


@dataclass(frozen=True)
class Kernel:
    """A filter with four-fold symmetry, stored as its top-left quadrant.

    ``weights`` is the full ``(2h + 1) × (2h + 1)`` kernel (float64 holding float32 values for
    ``center_psf``); ``quadrant[r, c] = weights[r, c]`` for ``r, c <= h``; ``first[r]`` is the
    first non-zero column of quadrant row ``r`` (``h + 1`` when the row is all zero). Only
    the non-zero taps are applied (the filter's support), as ``scipy.ndimage`` does.
    """

    weights: np.ndarray
    quadrant: np.ndarray
    first: np.ndarray

    @property
    def half(self) -> int:
        return int(self.quadrant.shape[0]) - 1


def gaussian_taps(sigma: float) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(ksize, sigma, CV_32F)`` with CaImAn's
    ``ksize = 2 * int(2 * sigma) + 1``: ``exp(-x² / 2σ²)`` at ``x = i - (ksize - 1) / 2``,
    normalised to sum 1 in float64, then rounded to float32.

    Examples
    --------
    >>> gaussian_taps(1.0).shape
    (5,)
    """
    n = 2 * int(2 * sigma) + 1
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def pnr_kernel(sigma: float | None, center_psf: bool = True) -> Kernel:
    """CaImAn's spatial filter of ``correlation_pnr`` for ``gSig = sigma``.

    ``center_psf=True``: the float32 outer product ``psf = g gᵀ`` of :func:`gaussian_taps`;
    the taps at least as large as the largest tap of the first row (a disk of radius about
    ``2·sigma``) keep ``psf − mean(psf[disk])`` (float32 arithmetic), every other tap is 0.
    The kernel sums to zero (to float32 rounding): it removes the local background.
    ``center_psf=False``: the plain Gaussian blur ``g gᵀ`` (exact float64 products of the
    float32 taps, as OpenCV's separable ``GaussianBlur`` applies them). ``sigma=None``: no
    filter (the identity).

    Examples
    --------
    >>> k = pnr_kernel(3)
    >>> k.weights.shape, abs(float(k.weights.sum())) < 1e-6
    ((13, 13), True)
    """
    if sigma is None:
        w = np.ones((1, 1))
    else:
        g = gaussian_taps(sigma)
        if center_psf:
            psf = np.outer(g, g).astype(np.float32)
            disk = psf >= psf[0].max()
            psf -= psf[disk].mean(dtype=np.float32)
            psf[~disk] = 0
            w = psf.astype(np.float64)
        else:
            g64 = g.astype(np.float64)
            w = np.outer(g64, g64)
    h = w.shape[0] // 2
    quadrant = np.ascontiguousarray(w[: h + 1, : h + 1])
    nz = quadrant != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), h + 1).astype(np.int64)
    return Kernel(w, quadrant, first)


@numba.njit(cache=True, nogil=True)
def _filter_row(src, i, q, first, c0, c1, s, acc):  # pragma: no cover - compiled
    """``acc[:c1 - c0]`` = row ``i``, columns ``c0..c1`` of the frame ``src`` correlated with
    the symmetric kernel of quadrant ``q`` (replicated borders).

    Rows ``i ± (h − r)`` are added first (``s``, with the replicated columns), then each column
    pair ``±(h − c)`` of quadrant row ``r``: one multiply-add per pair of taps.
    """
    H, W = src.shape
    h = q.shape[0] - 1
    n = c1 - c0
    m = n + 2 * h
    lo = min(max(h - c0, 0), m)  # s[k] reads column c0 - h + k: inside the frame for lo..hi
    hi = max(min(W - c0 + h, m), lo)
    for j in range(n):
        acc[j] = 0.0
    for r in range(h + 1):
        cs = first[r]
        if cs > h:
            continue
        a = src[min(max(i + r - h, 0), H - 1)]
        if r < h:
            b = src[min(max(i + h - r, 0), H - 1)]
            left = np.float64(a[0]) + np.float64(b[0])
            right = np.float64(a[W - 1]) + np.float64(b[W - 1])
            a_in = a[c0 - h + lo : c0 - h + hi]
            b_in = b[c0 - h + lo : c0 - h + hi]
            s_in = s[lo:hi]
            for k in range(hi - lo):
                s_in[k] = np.float64(a_in[k]) + np.float64(b_in[k])
        else:
            left = np.float64(a[0])
            right = np.float64(a[W - 1])
            a_in = a[c0 - h + lo : c0 - h + hi]
            s_in = s[lo:hi]
            for k in range(hi - lo):
                s_in[k] = np.float64(a_in[k])
        for k in range(lo):
            s[k] = left
        for k in range(hi, m):
            s[k] = right
        for c in range(cs, h):
            w = q[r, c]
            s1 = s[c : c + n]
            s2 = s[2 * h - c : 2 * h - c + n]
            for j in range(n):
                acc[j] += w * (s1[j] + s2[j])
        w = q[r, h]
        s1 = s[h : h + n]
        for j in range(n):
            acc[j] += w * s1[j]


@numba.njit(cache=True, nogil=True)
def _filter_frames(src, q, first, r0, r1, c0, c1, out):  # pragma: no cover - compiled
    T = src.shape[0]
    h = q.shape[0] - 1
    s = np.empty(c1 - c0 + 2 * h)
    acc = np.empty(c1 - c0)
    for t in range(T):
        frame = src[t]
        for i in range(r0, r1):
            _filter_row(frame, i, q, first, c0, c1, s, acc)
            o = out[t, i - r0]
            for j in range(c1 - c0):
                o[j] = acc[j]


def correlate_frames(
    frames: np.ndarray, kernel: Kernel, cols: tuple[int, int] | None = None, dtype: Any = None
) -> np.ndarray:
    """``frames`` (``(T, H, W)``, any real dtype) correlated with ``kernel``, frame by frame,
    with replicated borders (OpenCV's ``BORDER_REPLICATE``, scipy's ``mode="nearest"``).

    ``cols = (c0, c1)`` returns only those output columns (their neighbours within the kernel
    radius are read from ``frames``, replicated past its edges). The result is float64 (sums
    are float64 whatever ``dtype`` stores them), ``(T, H, c1 − c0)``: C-contiguous, or the
    transposed view of a C-contiguous ``(T, c1 − c0, H)`` when the frames are stored column by
    column.

    Examples
    --------
    >>> import scipy.ndimage as ndi
    >>> y = np.random.default_rng(0).normal(size=(2, 20, 24))
    >>> k = pnr_kernel(2)
    >>> ref = np.stack([ndi.correlate(f, k.weights, mode="nearest") for f in y])
    >>> bool(np.allclose(correlate_frames(y, k), ref, rtol=0, atol=1e-12))
    True
    """
    src, transposed = as_frames(frames)
    T, H, W = frames.shape
    c0, c1 = (0, W) if cols is None else cols
    dt = np.float64 if dtype is None else dtype
    if transposed:  # (the kernel is symmetric: filter the stored frames, transpose back)
        out = np.empty((T, c1 - c0, H), dt)
        if out.size:
            _filter_frames(src, kernel.quadrant, kernel.first, c0, c1, 0, H, out)
        return out.transpose(0, 2, 1)
    out = np.empty((T, H, c1 - c0), dt)
    if out.size:
        _filter_frames(src, kernel.quadrant, kernel.first, 0, H, c0, c1, out)
    return out


@numba.njit(cache=True, nogil=True)
def _gather_time_major(src, dst):  # pragma: no cover - compiled
    """``dst[t, j, i] = src[t, i, j]`` for frames whose time axis is the contiguous one.

    Runs of 64 pixels (consecutive in the file) stay in cache while their frames are written
    one after another, each as a contiguous run of ``dst``.
    """
    T, H, W = src.shape
    for j in range(W):
        for i0 in range(0, H, 64):
            i1 = min(H, i0 + 64)
            for t in range(T):
                d = dst[t, j]
                for i in range(i0, i1):
                    d[i] = src[t, i, j]


def as_frames(frames: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(T, H, W)`` frames as the compiled loops read them: each frame's rows contiguous.

    Returns ``(src, transposed)``: ``src`` is ``frames`` itself (rows contiguous, as TIFF
    pages and NumPy arrays are), or its ``(T, W, H)`` transpose (``transposed=True``: frames
    stored column by column, as a frame-major CaImAn memmap holds them; no copy). A
    pixel-major block (a CaImAn ``order_C`` memmap: time is the contiguous axis) is gathered
    into a recycled ``(T, W, H)`` buffer, pixel run by pixel run. The filter, the sums and the
    correlation are all symmetric under a transpose of the frame.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (T, H, W), got shape {frames.shape}")
    if frames.dtype == np.bool_ or frames.dtype.kind not in "iuf":
        frames = frames.astype(np.float64)
    it = frames.itemsize
    T, H, W = frames.shape
    if W == 1 or frames.strides[2] == it:
        return frames, False
    if H == 1 or frames.strides[1] == it:
        return frames.transpose(0, 2, 1), True
    dst = _buffers.empty((T, W, H), frames.dtype)
    if T > 1 and frames.strides[0] == it:
        _gather_time_major(frames, dst)
    else:
        dst[...] = frames.transpose(0, 2, 1)
    return dst, True


@numba.njit(cache=True, nogil=True)
def _sum_frames(src, out):  # pragma: no cover - compiled
    T, H, W = src.shape
    bad = 0
    for t in range(T):
        for i in range(H):
            row = src[t, i]
            o = out[i]
            for j in range(W):
                v = np.float64(row[j])
                if v - v != 0.0:
                    bad += 1
                o[j] += v
    return bad


def sum_frames(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Float64 sum over time of ``(T, H, W)`` frames and the number of non-finite values.

    Examples
    --------
    >>> s, bad = sum_frames(np.array([[[1.0, np.nan]], [[2.0, 3.0]]]))
    >>> s.tolist(), bad
    ([[3.0, nan]], 1)
    """
    src, transposed = as_frames(frames)
    out = np.zeros(src.shape[1:], dtype=np.float64)
    bad = int(_sum_frames(src, out)) if src.size else 0
    return (out.T if transposed else out), bad


def noise_frames(T: int) -> np.ndarray:
    """Positions of the frames CaImAn's ``get_noise_fft`` reads, in order.

    ``T <= 3072``: all frames. Longer: three 1024-frame segments concatenated, exactly as
    CaImAn slices them — ``[1, 1025)`` (frame 0 is skipped), ``[T//2 − 512, T//2 + 512)``
    and ``[T − 1024, T)``; segments may overlap (``T < 3074``), their frames then count
    twice.

    Examples
    --------
    >>> f = noise_frames(5000)
    >>> len(f), int(f[0]), int(f[1024]), int(f[-1])
    (3072, 1, 1988, 4999)
    """
    if T <= MAX_NOISE_FRAMES:
        return np.arange(T, dtype=np.int64)
    seg = MAX_NOISE_FRAMES // 3
    mid = T // 2
    return np.concatenate(
        [
            np.arange(1, seg + 1),
            np.arange(int(mid - seg / 2), int(mid + seg / 2)),
            np.arange(T - seg, T),
        ]
    ).astype(np.int64)


def noise_band(N: int) -> np.ndarray:
    """Frequency indices ``k`` (of an ``N``-point DFT) whose power CaImAn averages.

    CaImAn's ``ff = np.arange(0, 0.5 + 1/N, 1/N)`` and ``0.25 < ff <= 0.5`` (``noise_range``),
    computed the same way in float64 so the edges of the band fall where CaImAn's do. Empty
    for ``N < 2``.

    Examples
    --------
    >>> noise_band(8).tolist()
    [3, 4]
    """
    if N < 1:
        return np.zeros(0, dtype=np.int64)
    ff = np.arange(0, 0.5 + 1.0 / N, 1.0 / N)
    k = np.flatnonzero((ff > 0.25) & (ff <= 0.5))
    return k[k <= N // 2].astype(np.int64)


#: Pixels per sub-block of :func:`band_noise` (their ``N`` values fit in L2).
_NOISE_PIXELS = 128


def band_noise(pieces: list[np.ndarray], band: np.ndarray) -> np.ndarray:
    """CaImAn's noise level of each pixel from its filtered noise frames.

    ``pieces`` are consecutive runs of the frames of :func:`noise_frames` (``(n_i, H, w)``,
    in order; rows contiguous, else copied); ``band`` is :func:`noise_band` of their total
    length ``N``. The noise is
    ``sqrt(mean_k |X_k|² / N)`` over ``k`` in the band, ``X`` the DFT of the pixel's ``N``
    values (``noise_method='mean'``; the mean over time does not change ``X_k`` for ``k > 0``).
    A pixel whose values are all equal gets exactly 0 (its DFT would be rounding noise).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(4096, 1, 1))
    >>> sn = band_noise([x[:1000], x[1000:]], noise_band(4096))
    >>> bool(abs(float(sn[0, 0]) - 1) < 0.05)
    True
    """
    stored = [p if p.strides[2] == p.itemsize else np.ascontiguousarray(p) for p in pieces]
    H, w = stored[0].shape[1:]
    N = sum(int(p.shape[0]) for p in stored)
    out = np.empty((H, w), dtype=np.float64)
    rows = max(1, _NOISE_PIXELS // max(w, 1))
    buf = np.empty((min(H, rows) * w, N), dtype=np.float64)
    k0, k1 = int(band[0]), int(band[-1]) + 1  # (the band is a run of consecutive k)
    for i0 in range(0, H, rows):
        i1 = min(H, i0 + rows)
        x = buf[: (i1 - i0) * w]
        t = 0
        for p in stored:  # pixel-major copy: each FFT reads contiguous values
            n = p.shape[0]
            x[:, t : t + n] = p[:, i0:i1].reshape(n, -1).T
            t += n
        spec = scipy.fft.rfft(x, axis=-1)[:, k0:k1]
        power = (spec.real * spec.real + spec.imag * spec.imag).mean(axis=1) / N
        flat_pixels = x.max(axis=1) == x.min(axis=1)
        out[i0:i1] = np.where(flat_pixels, 0.0, np.sqrt(power)).reshape(i1 - i0, w)
    return out


def stored_orientation(frames: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(frames, False)`` if its rows are contiguous, else ``(its (T, W, H) transpose, True)``
    when that has contiguous rows (a :func:`correlate_frames` result of column-stored frames).
    """
    if frames.strides[2] == frames.itemsize or frames.shape[2] == 1:
        return frames, False
    t = frames.transpose(0, 2, 1)
    return (t, True) if t.strides[2] == t.itemsize else (frames, False)


@numba.njit(cache=True, nogil=True)
def _corr_moments(
    src, q, first, mean, inv_sn, thr, s1, s2, cr, cd, cdr, cdl, fmax
):  # pragma: no cover - compiled
    """Filter each frame row by row, threshold it, and add its moments (raw sums)."""
    T, H, W = src.shape
    h = q.shape[0] - 1
    s = np.empty(W + 2 * h)
    acc = np.empty(W)
    xa = np.empty(W)
    xb = np.empty(W)
    for t in range(T):
        frame = src[t]
        prev = xa
        cur = xb
        for i in range(H):
            _filter_row(frame, i, q, first, 0, W, s, acc)
            mi = mean[i]
            ii = inv_sn[i]
            fm = fmax[i]
            a1 = s1[i]
            a2 = s2[i]
            for j in range(W):
                f = acc[j]
                fm[j] = max(fm[j], f)  # (non-finite pixels are masked afterwards)
                z = (f - mi[j]) * ii[j]
                x = z if z >= thr else 0.0
                cur[j] = x
                a1[j] += x
                a2[j] += x * x
            r = cr[i]
            for j in range(W - 1):
                r[j] += cur[j] * cur[j + 1]
            if i > 0:
                d = cd[i - 1]
                for j in range(W):
                    d[j] += prev[j] * cur[j]
                dr = cdr[i - 1]
                dl = cdl[i - 1]
                for j in range(W - 1):
                    dr[j] += prev[j] * cur[j + 1]
                    dl[j] += prev[j + 1] * cur[j]
            prev, cur = cur, prev


#: The neighbour pairs of the correlation image: name, offset of the second pixel.
PAIRS = (("right", (0, 1)), ("down", (1, 0)), ("down_right", (1, 1)), ("down_left", (1, -1)))


def _pair_views(a: np.ndarray, di: int, dj: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``a`` at the first and second pixel of every pair at offset ``(di, dj)``."""
    H, W = a.shape
    if dj >= 0:
        return a[: H - di, : W - dj], a[di:, dj:]
    return a[: H - di, -dj:], a[di:, : W + dj]


def corr_moments(
    frames: np.ndarray, kernel: Kernel, mean: np.ndarray, sn: np.ndarray
) -> dict[str, Any]:
    """One block's statistics for the correlation image and the peak.

    Filters ``frames`` (:func:`correlate_frames`), thresholds ``x = z if z >= 3 else 0`` with
    ``z = (F − mean) / sn`` (``x = 0`` where ``sn == 0``; pixels the filter reaches from a
    non-finite value hold meaningless numbers here: the caller masks them), and
    returns ``n``, the per-pixel mean and centred sum of squares of ``x``, the centred
    co-moments of the four neighbour pairs (:data:`PAIRS`; ``down_left`` at ``[i, j]`` pairs
    ``(i, j + 1)`` with ``(i + 1, j)``) and the maximum of ``F``: what
    :func:`merge_moments` merges exactly.
    """
    src, transposed = as_frames(frames)
    T, H, W = src.shape
    inv = np.zeros_like(sn)
    np.divide(1.0, sn, out=inv, where=sn != 0)
    if transposed:
        mean, inv = np.ascontiguousarray(mean.T), np.ascontiguousarray(inv.T)
    s1 = np.zeros((H, W))
    s2 = np.zeros((H, W))
    cr = np.zeros((H, max(W - 1, 0)))
    cd = np.zeros((max(H - 1, 0), W))
    cdr = np.zeros((max(H - 1, 0), max(W - 1, 0)))
    cdl = np.zeros_like(cdr)
    fmax = np.full((H, W), -np.inf)
    if T:
        _corr_moments(
            src, kernel.quadrant, kernel.first, mean, inv, THRESHOLD, s1, s2, cr, cd, cdr,
            cdl, fmax,
        )  # fmt: skip
    if transposed:  # pairs of the transposed frame: right <-> down; the diagonals stay
        s1, s2, fmax, cr, cd, cdr, cdl = s1.T, s2.T, fmax.T, cd.T, cr.T, cdr.T, cdl.T
    n = float(T)
    mu = s1 / n if T else s1
    out: dict[str, Any] = {"n": n, "mean": mu, "m2": np.maximum(s2 - n * mu * mu, 0.0)}
    for (name, (di, dj)), raw in zip(PAIRS, (cr, cd, cdr, cdl), strict=True):
        a, b = _pair_views(mu, di, dj)
        out[name] = raw - n * a * b
    out["max"] = np.ascontiguousarray(fmax)
    return out


def merge_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Chan et al.'s exact merge of two blocks' :func:`corr_moments`."""
    na, nb = a["n"], b["n"]
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    d = b["mean"] - a["mean"]
    f = na * nb / n
    out: dict[str, Any] = {
        "n": n,
        "mean": a["mean"] + d * (nb / n),
        "m2": a["m2"] + b["m2"] + d * d * f,
    }
    for name, (di, dj) in PAIRS:
        p, q = _pair_views(d, di, dj)
        out[name] = a[name] + b[name] + p * q * f
    out["max"] = np.maximum(a["max"], b["max"])
    return out


def finish(
    moments: dict[str, Any], mean: np.ndarray, sn: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The correlation image and the peak-to-noise ratio from the merged moments.

    ``corr[p]`` is the mean, over the in-frame 8-neighbours ``q`` of ``p``, of the Pearson
    correlation of the thresholded traces (0 when either is constant), as CaImAn's
    ``local_correlations_fft``; ``pnr = (max F − mean F) / sn`` clipped at 0 (0 where
    ``sn == 0``).
    """
    m2 = moments["m2"]
    H, W = m2.shape
    total = np.zeros((H, W))
    count = np.zeros((H, W))
    for name, (di, dj) in PAIRS:
        c = moments[name]
        va, vb = _pair_views(m2, di, dj)
        den = np.sqrt(va * vb)
        rho = np.zeros_like(c)
        np.divide(c, den, out=rho, where=den > 0)
        rho = np.where(np.isfinite(den), rho, np.nan)
        ta, tb = _pair_views(total, di, dj)
        ta += rho
        tb += rho
        na, nb = _pair_views(count, di, dj)
        na += 1
        nb += 1
    corr = np.full((H, W), np.nan)
    np.divide(total, count, out=corr, where=count > 0)
    pnr = np.zeros((H, W))
    np.divide(moments["max"] - mean, sn, out=pnr, where=sn != 0)
    pnr[pnr < 0] = 0
    return corr, pnr


def n_tiles(H: int, W: int, N: int, tile_bytes: int) -> list[tuple[int, int]]:
    """Column ranges of the noise tiles: as few as keep ``N`` float64 frames of a tile within
    ``tile_bytes`` (at least one column each)."""
    cols = max(1, min(W, tile_bytes // max(1, 8 * N * H)))
    k = math.ceil(W / cols)
    edges = np.linspace(0, W, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]
