"""CNMF-E summary images out of core: CaImAn's ``correlation_pnr`` as :func:`pnr_images`.

CaImAn holds the float32 movie about three times in memory for these two images (its
issue #1079: 64 GB for a one-hour 500 × 500 recording). Here the movie streams through dask
tasks in time blocks (and, for the noise, in column tiles), so memory stays bounded whatever
its length; the per-block arithmetic is in :mod:`caiman_dask._summary_kernels`.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.ndimage
from dask.base import tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, List, Task, TaskRef

from ._compute import compute
from ._index import frame_window
from ._io import MovieSource, open_movie
from ._movie import Movie
from ._options import positive_int
from ._summary_kernels import (
    Kernel,
    band_noise,
    corr_moments,
    correlate_frames,
    finish,
    merge_moments,
    n_tiles,
    noise_band,
    noise_frames,
    pnr_kernel,
    stored_orientation,
    sum_frames,
)
from .errors import NaNWarning, OptionError, ShapeMismatchError

__all__ = ["TILE_BYTES", "pnr_images"]

#: Default memory for one noise tile: its filtered noise frames in float64.
TILE_BYTES = 512 * 2**20


def pnr_images(
    movie: Any,
    gSig: Any,
    *,
    frames: Any = None,
    center_psf: bool = True,
    progress: bool | None = None,
    tile_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CaImAn's CNMF-E summary images ``(corr, pnr)``, computed out of core.

    What ``cm.summary_images.correlation_pnr(Y, gSig=gSig, swap_dim=False)`` returns, for
    choosing ``min_corr`` and ``min_pnr`` before a CNMF-E fit, from a movie of any length in
    bounded memory, on the local threaded scheduler or unchanged on a ``dask.distributed``
    cluster (the active ``Client``).

    Parameters
    ----------
    movie
        A movie ``(T, d1, d2)``: a path (CaImAn memmap of either order, TIFF, HDF5, zarr,
        ``.npy``; opened with :func:`~caiman_dask.open_movie`), a
        :class:`~caiman_dask.MovieSource`, a lazy movie (``cd.raw(model)``,
        ``cd.residuals(model)``...: its ``.data``), or a NumPy / dask array.
    gSig
        The neurons' Gaussian radius in pixels, CaImAn's ``gSig``: a positive number (at least
        0.5) or a pair of equal numbers (CaImAn's ``params.init['gSig']`` such as ``(3, 3)``;
        CaImAn itself passes ``gSig[0]``). ``None``: no spatial filter (as CaImAn's
        ``gSig=None``).
    frames
        A time window: ``None`` (all), a slice, int indices (in the given order) or a boolean
        mask; the images are those of the movie ``Y[frames]``.
    center_psf
        ``True`` (CaImAn's default and CNMF-E's setting): the mean-centred Gaussian filter
        that removes the local background; ``False``: a plain Gaussian blur.
    progress
        Show progress bars (one per pass).
    tile_bytes
        Memory for one noise tile (default 512 MiB): the tile's filtered noise frames in
        float64, ``8 × N × d1 × width`` bytes with ``N <= 3072``; it sets the tile width.

    Returns
    -------
    corr, pnr : numpy.ndarray
        float64 images shaped ``(d1, d2)``.

    Raises
    ------
    OptionError
        ``gSig`` not a positive number (or a pair of unequal ones), a 3D movie (CaImAn
        defines these images for 2D movies only), an empty or out-of-range window, fewer than
        2 frames (no noise estimate), an object that is not a movie, a bad ``tile_bytes``.
    ShapeMismatchError
        An array that is not ``(T, d1, d2)``.

    Warns
    -----
    NaNWarning
        The window holds non-finite values (NaN, inf); the message gives their number and
        the pixels they make NaN.

    Notes
    -----
    The definitions, each as CaImAn (1.12, ``caiman/summary_images.py``) computes it:

    **Filter.** Each frame is correlated with the kernel of ``gSig = σ``: ``ksize =
    2·int(2σ) + 1`` taps per axis, ``g`` = OpenCV's ``getGaussianKernel(ksize, σ, CV_32F)``
    (``exp(−x²/2σ²)`` normalised to sum 1, float32). ``center_psf=True``: ``psf = g gᵀ``
    (float32); the taps ``>= max(psf[0])`` (a disk of radius ``≈ 2σ``) become
    ``psf − mean(psf[disk])``, all others 0. ``center_psf=False``: ``g gᵀ``. Borders are
    replicated (``cv2.filter2D(..., borderType=1)`` is ``BORDER_REPLICATE``: scipy's
    ``mode="nearest"``). The filtered movie is ``F``.

    **Noise** (``get_noise_fft``, ``noise_method='mean'``, ``noise_range=[0.25, 0.5]``).
    From ``N`` frames of ``F``: all of them when ``T <= 3072``, else three 1024-frame
    segments concatenated, ``[1, 1025)`` (frame 0 skipped), ``[T//2 − 512, T//2 + 512)``
    and ``[T − 1024, T)`` (positions in the window). With ``X`` the ``N``-point DFT of a
    pixel's values there, ``sn = sqrt(mean |X_k|² / N)`` over the ``k`` with
    ``0.25 < ff[k] <= 0.5``, ``ff = np.arange(0, 0.5 + 1/N, 1/N)`` (so the band's edges fall
    as CaImAn's do).

    **PNR.** ``pnr = max_t(F − mean_t F) / sn = (max F − mean F) / sn``, negative values set
    to 0.

    **Correlation.** ``x = (F − mean F) / sn`` where it is at least 3, else 0
    (``tmp_data[tmp_data < 3] = 0``). ``corr[p]`` is the mean over the 8 neighbours of ``p``
    inside the frame (8 inside, 5 on an edge, 3 in a corner) of the Pearson correlation
    (population std) of ``x_p`` and ``x_q``, 0 when either is constant: CaImAn's
    ``local_correlations_fft`` (its true 8-neighbour mean, not ``local_correlations``'
    quirky one).

    **Edge cases.** A pixel whose filtered values are all equal over the noise frames has
    ``sn = 0``: its ``pnr`` is 0 and its thresholded trace is 0 (CaImAn: NaN or inf, or
    float32 rounding noise). A non-finite value in frame ``t`` makes ``F_t`` non-finite at
    the pixels whose filter support (the non-zero taps) reaches it: those pixels get NaN in
    both images, and their 8 neighbours NaN in ``corr`` (CaImAn spreads the NaN the same
    way through its correlation); one :class:`~caiman_dask.NaNWarning` says how many.

    **Precision.** Everything is float64 from the movie's own values (CaImAn rounds the
    movie to float32 first and works in float32): against a float64 dense reference the
    images agree to about 1e-10; against CaImAn's float32 result to its rounding (pnr
    about 1e-5 relative; corr can differ more at the rare pixels where a value sits within
    rounding of the 3·sn threshold).

    **Cost.** ``Y`` is read twice in full — a plain sum for ``mean F = filter(mean Y)``, then
    the filtered pass that takes the maximum and the correlation moments — and the
    ``N <= 3072`` noise frames once more, tile by tile (whole frames when one tile holds
    them). Each frame is filtered once in the main pass (plus the noise frames once, with
    a halo of ``2·int(2σ)`` columns per tile). Memory: one time block per running task,
    about 8 float64 images per block of moments, and at most ``tile_bytes`` per noise tile;
    never the whole movie or a whole filtered copy. Moments are merged exactly across
    blocks (Chan's pairwise update), so the result does not depend on the chunking.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(32, 40), T=200, K=6, seed=0, ring_ssub=2)
    >>> corr, pnr = cd.pnr_images(cd.raw(m), gSig=3)
    >>> corr.shape, pnr.shape, corr.dtype
    ((32, 40), (32, 40), dtype('float64'))
    >>> bool(pnr.max() > 5 and corr.max() > 0.5)
    True
    """
    sigma = _check_gsig(gSig)
    if not isinstance(center_psf, bool | np.bool_):
        raise OptionError(f"center_psf={center_psf!r} must be True or False")
    budget = positive_int("tile_bytes", tile_bytes, what="bytes", default="512 MiB") or TILE_BYTES
    Y, window = _windowed(_movie_array(movie), frames)
    T, H, W = (int(s) for s in Y.shape)
    picks = noise_frames(T)
    band = noise_band(len(picks))
    if band.size == 0:
        raise OptionError(
            f"pnr_images needs at least 2 frames for the noise estimate (the power above a "
            f"quarter of the sampling rate); the movie{'' if window is None else ' window'} "
            f"has T={T}. Pass a longer movie or a wider frames= window."
        )
    kernel = pnr_kernel(sigma, bool(center_psf))
    show = bool(progress)
    name = f"pnr-images-{tokenize(Y.name, kernel.weights, budget)}"

    # pass 1: the temporal mean of Y, and the noise level tile by tile (independent)
    g = _Graph(f"{name}-1")
    kern = g.data("kernel", kernel)
    total = g.tree("sum", [g.task("sum", sum_frames, b) for b in g.blocks(Y)], _add_sums)
    picked = _take(Y, picks)
    h = kernel.half
    freqs = g.data("band", band)
    tiles = []
    done: list[Any] = []  # the previous tile: tiles run one after the other (bounded memory)
    for c0, c1 in n_tiles(H, W, len(picks), budget):
        a, b = max(0, c0 - h), min(W, c1 + h)
        pieces = [
            g.task("piece", _noise_piece, blk, kern, c0 - a, c1 - a, List(*done))
            for blk in g.blocks(picked[..., a:b])
        ]
        done = [
            g.task("fft", _tile_noise, List(*pieces), freqs, i, _FFT_TASKS)
            for i in range(_FFT_TASKS)
        ]
        tiles.append(g.task("tile", _assemble, List(*done)))
    first = g.task("out", _pack, total, List(*tiles))
    (((ysum, nonfinite), sn_tiles),) = compute([g.delayed(first)], show)
    mean = correlate_frames((ysum / T)[None], kernel)[0]
    sn = np.concatenate(sn_tiles, axis=1)

    # pass 2: filter again, take the maximum and the thresholded moments
    g = _Graph(f"{name}-2")
    args = (g.data("kernel", kernel), g.data("mean", mean), g.data("sn", sn))
    parts = [g.task("moments", corr_moments, b, *args) for b in g.blocks(Y)]
    (merged,) = compute([g.delayed(g.tree("merge", parts, merge_moments))], show)
    corr, pnr = finish(merged, mean, sn)
    _mark_nonfinite(corr, pnr, mean, nonfinite, frames)
    return corr, pnr


class _Graph:
    """A task graph built by hand: one task per block, no per-call graph merging (building
    it with ``dask.delayed`` merges and culls the growing graph at every call)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: dict[Any, Any] = {}
        self.collections: list[Any] = []

    def blocks(self, arr: da.Array) -> list[TaskRef]:
        """References to the blocks of ``arr``, optimised on their own (each block task
        reads its slice of the file; slices of one array in several tiles are not shared)."""
        (opt,) = dask.optimize(arr)
        self.collections.append(opt)
        return [TaskRef(k) for k in flatten(opt.__dask_keys__())]

    def _key(self, label: str) -> tuple[str, int]:
        return (f"{self.name}-{label}", len(self.tasks))

    def data(self, label: str, value: Any) -> TaskRef:
        key = self._key(label)
        self.tasks[key] = DataNode(key, value)
        return TaskRef(key)

    def task(self, label: str, func: Callable[..., Any], *args: Any) -> TaskRef:
        key = self._key(label)
        self.tasks[key] = Task(key, func, *args)
        return TaskRef(key)

    def tree(self, label: str, parts: list[TaskRef], combine: Callable[..., Any]) -> TaskRef:
        """Pairwise tree reduction of ``parts`` with ``combine``."""
        while len(parts) > 1:
            nxt = [
                self.task(label, combine, a, b)
                for a, b in zip(parts[::2], parts[1::2], strict=False)
            ]
            parts = nxt + parts[len(nxt) * 2 :]
        return parts[0]

    def delayed(self, ref: TaskRef) -> Delayed:
        hlg = HighLevelGraph.from_collections(self.name, self.tasks, self.collections)
        return Delayed(ref.key, hlg, layer=self.name)


def _pack(*parts: Any) -> tuple[Any, ...]:
    return parts


def _check_gsig(gSig: Any) -> float | None:
    """``gSig`` as one positive radius (``None``: no filter), or an :class:`OptionError`."""
    if gSig is None:
        return None
    value = gSig
    if isinstance(gSig, Sequence | np.ndarray) and not isinstance(gSig, str):
        vals = list(np.asarray(gSig, dtype=object).ravel())
        if len(vals) != 2:
            raise OptionError(
                f"gSig={gSig!r}: pass one number (CaImAn's gSig[0]) or a pair (d1, d2) of "
                "equal numbers; pnr_images is for 2D movies."
            )
        if not all(_is_real(v) for v in vals) or float(vals[0]) != float(vals[1]):
            raise OptionError(
                f"gSig={gSig!r} is not a pair of equal numbers. CaImAn's correlation_pnr "
                "applies the two entries of a pair to different axes with center_psf=True and "
                "False, and CNMF-E passes it gSig[0]; pass that one number, e.g. "
                f"gSig={vals[0]!r}."
            )
        value = vals[0]
    if not _is_real(value):
        raise OptionError(
            f"gSig={gSig!r} must be a number: the neurons' Gaussian radius in pixels "
            "(CaImAn's gSig, e.g. 3), or None for no spatial filter."
        )
    sigma = float(value)
    if not math.isfinite(sigma) or sigma < 0.5:
        hint = (
            " (CaImAn skips the filter for gSig=0; pass gSig=None for that)" if sigma == 0 else ""
        )
        raise OptionError(
            f"gSig={gSig!r} must be a finite number >= 0.5 (the kernel has 2·int(2·gSig) + 1 "
            f"taps per axis, so a smaller gSig leaves a single tap){hint}."
        )
    return sigma


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def _movie_array(movie: Any) -> da.Array:
    """The movie ``(T, d1, d2)`` as a dask array with whole frames per chunk."""
    if isinstance(movie, Movie):
        data = movie.data
    elif isinstance(movie, MovieSource):
        data = movie.data
    elif isinstance(movie, str | os.PathLike) or (
        hasattr(movie, "shape") and hasattr(movie, "dtype")
    ):
        data = open_movie(movie).data
    else:
        raise OptionError(
            f"movie must be a movie: a path, an array (T, d1, d2), a MovieSource or a lazy "
            f"movie (cd.raw(model)...); got {type(movie).__name__}."
        )
    if data.ndim == 4:
        raise OptionError(
            f"pnr_images: the movie has shape {tuple(data.shape)} (T, d1, d2, d3), but CaImAn "
            "defines correlation_pnr for 2D movies only (it unpacks `_, d1, d2 = Y.shape`). "
            "Compute it plane by plane, e.g. cd.pnr_images(Y[..., z], gSig)."
        )
    if data.ndim != 3:
        raise ShapeMismatchError(
            f"pnr_images takes a movie (T, d1, d2); got an array of shape {tuple(data.shape)}."
        )
    if data.dtype.kind not in "biuf":
        raise OptionError(f"the movie has dtype {data.dtype}; pnr_images needs real numbers.")
    if any(len(c) > 1 for c in data.chunks[1:]):
        data = data.rechunk({1: -1, 2: -1})
    return data


def _windowed(data: da.Array, frames: Any) -> tuple[da.Array, Any]:
    """``data[frames]`` (validated by :func:`~caiman_dask._index.frame_window`)."""
    if frames is None:
        return data, None
    window = frame_window(frames, int(data.shape[0]))
    return (data if window.whole else data[window.index]), window


def _take(Y: da.Array, picks: np.ndarray) -> da.Array:
    """``Y[picks]`` for the noise frames: slices of runs of consecutive frames, concatenated."""
    if len(picks) == Y.shape[0]:
        return Y
    breaks = np.flatnonzero(np.diff(picks) != 1) + 1
    runs = np.split(picks, breaks)
    return da.concatenate([Y[int(r[0]) : int(r[-1]) + 1] for r in runs], axis=0)


def _add_sums(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    return a[0] + b[0], a[1] + b[1]


def _noise_piece(
    frames: np.ndarray, kernel: Kernel, c0: int, c1: int, after: list[Any]
) -> np.ndarray:
    """Noise frames of one tile (columns ``c0..c1`` of ``frames``, which carry the halo), in
    float64 (float32 would move the noise by ~1e-7 where the filtered values are large);
    ``after`` (the previous tile's result) only orders the tiles."""
    return correlate_frames(frames, kernel, (c0, c1))


def _tile_noise(
    pieces: list[np.ndarray], band: np.ndarray, g: int, G: int
) -> tuple[np.ndarray, int]:
    """Part ``g`` of ``G`` of a tile's noise level (a tile's FFTs run as a few parallel
    tasks), split along the rows the pieces store contiguously: the tile's rows, or its
    columns (returned with the axis it spans)."""
    transposed = stored_orientation(pieces[0])[1]  # (a short block may come copied to C order)
    stored = [p.transpose(0, 2, 1) if transposed else p for p in pieces]
    rows = stored[0].shape[1]
    a, b = (rows * g) // G, (rows * (g + 1)) // G
    part = band_noise([s[:, a:b] for s in stored], band)
    return (part.T, 1) if transposed else (part, 0)


def _assemble(parts: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """A tile's noise level from its :func:`_tile_noise` parts."""
    return np.concatenate([p for p, _ in parts], axis=parts[0][1])


#: Tasks that share one tile's FFTs.
_FFT_TASKS = 4


def _mark_nonfinite(
    corr: np.ndarray, pnr: np.ndarray, mean: np.ndarray, nonfinite: int, frames: Any
) -> None:
    """NaN where the filter reaches a non-finite value (corr: and at their neighbours), with
    one :class:`~caiman_dask.NaNWarning`."""
    bad = ~np.isfinite(mean)
    if not nonfinite and not bad.any():
        return
    pnr[bad] = np.nan
    near = scipy.ndimage.binary_dilation(bad, np.ones((3, 3), dtype=bool))
    corr[near] = np.nan
    where = "the movie" if frames is None else f"frames={frames!r}"
    warnings.warn(
        f"pnr_images: {where} holds {nonfinite} non-finite values (NaN or inf); the filter "
        f"spreads them to {int(bad.sum())} pixels, whose pnr and corr are NaN (corr also at "
        f"their neighbours: {int(near.sum())} pixels). Look for NaN / inf in the movie "
        "(np.isfinite).",
        NaNWarning,
        stacklevel=3,
    )
