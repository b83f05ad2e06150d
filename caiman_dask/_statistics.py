"""The one owner of a movie's statistics: exact projections, extrema, and their cache.

A movie describes itself (:class:`~caiman_dask._description.Description`); this module reads
that description, never the movie's class:

- a **factored** movie (RCM, low-rank RCB, and any sum or scalar multiple of them:
  ``[A b]·[C; f]`` is again factored) is projected from its factors
  (:mod:`caiman_dask._structured`): mean ``A·mean(C)``, variance ``a_p Σ a_pᵀ`` with
  ``Σ = cov(C)``, min / max in closed form under one footprint and by an exact pass over the
  few rows ``C[S_p]`` where footprints overlap, correlation images from the covariances of
  neighbouring pixels. The movie is never formed and ``Y`` never read.
- a **streaming** movie (anything with ``Y`` or the ring background: residuals, the raw movie,
  ``raw − rcb``...) takes **one** dask pass over ``Y`` that accumulates every statistic at
  once (float64, Chan merging; :mod:`caiman_dask._streaming`). Movies ``Y + factored``
  (residuals, ``raw − rcb``) are reduced straight from ``Y``'s blocks in the file's own pixel
  order by the fused kernel (:mod:`caiman_dask._moment_kernels`), their residual block never
  stored. Movies of a CNMF-E model ``cy·Y + ca·A·C + cr·B_ring`` (the ring background, its
  residuals, ``raw − rcb``...) share one pass in which each block's background is computed
  once for all of them (:mod:`caiman_dask._ring_pass`); others reduce their ``.data`` blocks.

Merged statistics are cached by the movie's identity (its description's token, dtype and
chunks: two movies built alike share them), so further kinds, ``movie.min`` / ``movie.max``
and exports cost nothing once a pass has run.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeGuard, TypeVar, cast, get_args

import dask
import dask.array as da
import numpy as np
import scipy.sparse
from dask.base import tokenize

from . import _streaming, _structured
from ._compute import compute
from ._corr_kernels import CorrMomentsState
from ._description import Description, Factor
from ._frame_kernels import frame_rows, frames
from ._graph import (
    background_op,
    f_blocks,
    footprint_op,
    movie_graph,
    ring_op,
    trace_blocks,
    y_blocks,
)
from ._index import Window, frame_window
from ._moment_kernels import MomentsOperator, MomentsState, prepare_moments
from ._options import choose
from ._ring_pass import ring_block_stats_as_stored, ring_coefficients, to_c_order
from .errors import NaNWarning, OptionError

__all__ = [
    "KINDS",
    "Kind",
    "MovieLike",
    "cached_min_max",
    "forget_statistics",
    "images",
    "min_max",
    "nonfinite_pixels",
    "project",
    "remember",
    "stats_of_blocks",
]

F = TypeVar("F", bound=Any)
Kind = Literal["mean", "std", "min", "max", "corr"]
#: The projections :func:`project` computes.
KINDS: tuple[Kind, ...] = get_args(Kind)
#: Frames per canonical block of the fused pass (``Y + factored`` movies; twice as many with
#: ``"corr"``, whose per-block state is larger): each block is folded frame by frame, so it
#: needs no buffer.
FOLD_FRAMES = 512
#: Bytes of one canonical block of a movie's frames for :func:`_streaming.block_stats` (two
#: passes over the block: it is held in memory).
BLOCK_BYTES = 64 * 2**20
#: Bytes of one canonical block of a ring-model movie's pass (:mod:`caiman_dask._ring_pass`:
#: the block is read in place, only its downsampled grid is held, twice).
RING_BLOCK_BYTES = 128 * 2**20
#: Statistics (and factored operators) kept in memory: at most this many entries ...
_CACHE_SIZE = 32
#: ... and this many bytes (the least recently used are dropped first).
CACHE_BYTES = 256 * 2**20


class MovieLike(Protocol):
    """What statistics need of a movie: its description, dtype, shape, chunks and graph."""

    @property
    def description(self) -> Description: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def time_chunks(self) -> tuple[int, ...]: ...

    @property
    def data(self) -> da.Array: ...


def _quiet(func: F) -> F:
    """``func`` without NumPy's floating-point warnings: non-finite values are counted and
    reported once per call instead (see :func:`_mark_nonfinite`)."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return func(*args, **kwargs)

    return cast(F, run)


_block_stats = _quiet(_streaming.block_stats)
_merge_stats = _quiet(_streaming.merge_stats)
_finalize = _quiet(_streaming.finalize)


def _is_movie(x: Any) -> TypeGuard[MovieLike]:
    """Whether ``x`` is a described movie (checked without building anything)."""
    return isinstance(getattr(x, "description", None), Description)


class _LRU:
    """A thread-safe least-recently-used map of at most ``size`` entries and ``max_bytes``
    bytes of NumPy arrays."""

    def __init__(self, size: int, max_bytes: int = CACHE_BYTES) -> None:
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._size = size
        self._max_bytes = max_bytes
        self._bytes: dict[Any, int] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._d:
                return None
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            self._bytes[key] = _nbytes(value)
            while len(self._d) > 1 and (
                len(self._d) > self._size or sum(self._bytes.values()) > self._max_bytes
            ):
                old, _ = self._d.popitem(last=False)
                self._bytes.pop(old, None)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes.clear()


def _nbytes(value: Any) -> int:
    """Bytes of the NumPy arrays (and sparse matrices) in a cached value."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if scipy.sparse.issparse(value):
        return int(value.data.nbytes + getattr(value, "indices", np.empty(0)).nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return 0


_STATS = _LRU(_CACHE_SIZE)
_FACTORED = _LRU(8)


def _identity(mv: MovieLike) -> str:
    """What a movie's streaming statistics depend on: description, dtype and time chunks."""
    return tokenize(mv.description.token, str(np.dtype(mv.dtype)), tuple(mv.time_chunks))


def _kinds(kind: str | Iterable[str]) -> tuple[Kind, ...]:
    ks = [kind] if isinstance(kind, str) else list(kind)
    if not ks:
        raise OptionError(f"kind must name at least one projection of {list(KINDS)}")
    return tuple(choose("kind", k, KINDS) for k in ks)


# ---------------------------------------------------------------------------------------------
# Factored movies: from the structure
# ---------------------------------------------------------------------------------------------


def _factored(desc: Description) -> tuple[Any, np.ndarray, _structured.FootprintGroups]:
    """``(spatial factor in C pixel order, traces, groups)`` of a factored movie, float64
    (cached)."""
    hit = _FACTORED.get(desc.token)
    if hit is None:
        hit = _factored_arrays(desc)
        _FACTORED.put(desc.token, hit)
    return hit


def _factored_arrays(
    desc: Description, traces: Mapping[str, np.ndarray] | None = None
) -> tuple[Any, np.ndarray, _structured.FootprintGroups]:
    """:func:`_factored` with the trace matrices by name (``"C"``, ``"f"``...; default: the
    model's)."""
    h = desc.model._host

    def rows(f: Factor) -> np.ndarray:
        X = desc.host_traces(f) if traces is None else traces[f.traces_name]
        return np.asarray(X[f.columns], dtype=np.float64)

    spatial: list[Any] = []
    temporal: list[np.ndarray] = []
    for f in desc.footprints:
        A = scipy.sparse.csr_matrix(h.A[:, f.columns], dtype=np.float64)
        w = f.weights[f.columns]
        spatial.append(A if np.all(w == 1.0) else A @ scipy.sparse.diags(w))
        temporal.append(rows(f))
    bg = desc.background
    if bg is not None:
        assert h.b is not None
        spatial.append(np.asarray(h.b[:, bg.columns], dtype=np.float64) * bg.weights[bg.columns])
        temporal.append(rows(bg))
    if not spatial:
        T = desc.model.T if traces is None else next(iter(traces.values())).shape[1]
        A_all: Any = scipy.sparse.csr_matrix((desc.model.P, 0))
        C_all = np.zeros((0, T))
    elif len(spatial) == 1:
        A_all, C_all = spatial[0], temporal[0]
    else:
        A_all = scipy.sparse.hstack([scipy.sparse.csr_matrix(s) for s in spatial], format="csr")
        C_all = np.concatenate(temporal, axis=0)
    return A_all, np.ascontiguousarray(C_all), _structured.footprint_groups(A_all)


def _factored_project(
    desc: Description, kinds: Sequence[Kind], window: Window
) -> dict[str, np.ndarray]:
    A, C, groups = _factored(desc)
    if not window.whole:
        C = np.ascontiguousarray(C[:, window.index])
    return _factored_images(desc, kinds, A, C, groups)


@_quiet
def _factored_images(
    desc: Description,
    kinds: Sequence[Kind],
    A: Any,
    C: np.ndarray,
    groups: _structured.FootprintGroups,
    movie: MovieLike | None = None,
) -> dict[str, np.ndarray]:
    """Images of the factored movie ``A·C`` (with ``movie``: only ``kinds``, non-finite
    pixels marked and reported, as :func:`project` returns them)."""
    if movie is not None:
        full = _factored_images(desc, tuple(dict.fromkeys((*kinds, "mean"))), A, C, groups)
        _mark_nonfinite(full, movie, None)
        return {k: full[k] for k in kinds}
    dims = desc.model.dims
    out: dict[str, np.ndarray] = {}
    if "mean" in kinds:
        out["mean"] = _structured.structured_mean(A, C, groups=groups)
    std = None
    if "std" in kinds or "corr" in kinds:
        std = _structured.structured_std(A, C, groups=groups)
        if "std" in kinds:
            out["std"] = std
    if "min" in kinds or "max" in kinds:
        lo, hi = _structured.structured_min_max(A, C, groups=groups)
        if "min" in kinds:
            out["min"] = lo
        if "max" in kinds:
            out["max"] = hi
    if "corr" in kinds:
        assert std is not None
        offsets = _streaming.corr_offsets(len(dims))
        pairs = _structured.structured_cov_pairs(A, C, dims, offsets)
        pairs = {k: np.reshape(v, dims) for k, v in pairs.items()}
        out["corr"] = _streaming.caiman_corr_from_pairs(np.reshape(std**2, dims), pairs, dims)
    return {k: np.reshape(v, dims) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Streaming movies: one pass over Y
# ---------------------------------------------------------------------------------------------


def stats_of_blocks(data: da.Array, corr: bool) -> Any:
    """A delayed reduction of :func:`_streaming.block_stats` over a dask array's blocks,
    merged in :func:`merge_tree`'s order."""
    stats_of = dask.delayed(_block_stats, pure=True)
    return merge_tree([stats_of(b, corr=corr) for b in data.to_delayed().ravel()])


def merge_tree(parts: Sequence[Any], merge: Any = None) -> Any:
    """Merge the statistics of consecutive blocks in one fixed tree: the first ``2**k`` blocks
    (the largest power of two below their number), then the rest, each the same way.

    It is the tree a binary counter builds when blocks arrive one by one (see
    :class:`~caiman_dask._accumulate.Accumulator`), so a pass over the whole movie and a
    stream of the same blocks merge in the same order: bit for bit the same result. ``merge``:
    a function of two statistics (default: delayed :func:`_streaming.merge_stats`).
    """
    merge = dask.delayed(_merge_stats, pure=True) if merge is None else merge
    if len(parts) == 1:
        return parts[0]
    half = 1 << ((len(parts) - 1).bit_length() - 1)
    return merge(merge_tree(parts[:half], merge), merge_tree(parts[half:], merge))


def canonical_frames(mv: MovieLike, corr: bool) -> int:
    """Frames per canonical block of ``mv``'s pass (the unit both the dask pass and a stream
    fold, whatever the chunks of ``Y``)."""
    if fused(mv.description, corr):
        return 2 * FOLD_FRAMES if corr else FOLD_FRAMES
    frame_bytes = math.prod(mv.shape[1:]) * np.dtype(mv.dtype).itemsize
    if not corr and ring_coefficients(mv.description) is not None:
        return max(1, RING_BLOCK_BYTES // max(1, frame_bytes))
    return max(1, BLOCK_BYTES // max(1, frame_bytes))


def canonical_chunks(n: int, frames: int) -> tuple[int, ...]:
    """``n`` frames in canonical blocks of ``frames`` (the last one shorter)."""
    full, rest = divmod(n, frames)
    return (frames,) * full + ((rest,) if rest else ())


def fused(desc: Description, corr: bool) -> bool:
    """Whether a movie's statistics come from a fused one-pass kernel (``Y + factored``; the
    neighbour co-moments of ``"corr"`` too for 2D frames)."""
    return desc.y == 1.0 and desc.ring == 0.0 and (not corr or len(desc.model.dims) == 2)


def _traces_of(c: Sequence[Any], n: int) -> np.ndarray:
    """The block's traces ``(n, K_sel)`` from each footprint factor's ``(K_j, n)`` block."""
    parts = [np.asarray(x) for x in c]
    return np.concatenate(parts, axis=0).T if parts else np.zeros((n, 0))


@_quiet
def _residual_block_moments(
    y: np.ndarray,
    mop_C: Any,
    mop_F: Any,
    c: Sequence[Any],
    f: np.ndarray | None,
    *,
    dims: tuple[int, ...],
    corr: bool = False,
) -> dict[str, Any]:
    """Mean / M2 / min / max (and with ``corr`` the neighbour co-moments) of one block of
    ``Y − (b·f + A·C)`` in one fused pass (the block of the movie itself is never stored)."""
    rows, fortran = frame_rows(y)
    shape = dims[::-1] if fortran else dims
    state = fold_state(mop_F if fortran else mop_C, shape, corr)
    state.update(rows, _traces_of(c, y.shape[0]), None if f is None else np.asarray(f).T)
    stats: dict[str, Any] = {
        k: v if k in ("n", "comoment") else np.reshape(v, shape) for k, v in state.result().items()
    }
    return _streaming.stats_to_c_order(stats, dims) if fortran else stats


def fold_state(op: MomentsOperator, shape: tuple[int, ...], corr: bool) -> Any:
    """The running statistics of a fused pass over frames of ``shape`` (in ``op``'s pixel
    order): with ``corr``, the neighbour co-moments too (2D frames)."""
    return CorrMomentsState(op, (shape[0], shape[1])) if corr else MomentsState(op)


@_quiet
def _residual_block_stats(
    y: np.ndarray,
    opA_C: Any,
    opA_F: Any,
    opB_C: Any,
    opB_F: Any,
    c: Sequence[Any],
    f: np.ndarray | None,
    *,
    dims: tuple[int, ...],
    out_dtype: np.dtype,
) -> dict[str, Any]:
    """Statistics with neighbour co-moments of one block of ``Y − (b·f + A·C)``, in the
    block's own pixel order."""
    rows, fortran = frame_rows(y)
    A, b = (opA_F, opB_F) if fortran else (opA_C, opB_C)
    n = y.shape[0]
    out = np.empty((n, math.prod(dims)), out_dtype)
    frames(out, A, _traces_of(c, n), b, None if f is None else np.asarray(f).T, rows)
    stats = _streaming.block_stats(out.reshape((n, *(dims[::-1] if fortran else dims))), corr=True)
    return _streaming.stats_to_c_order(stats, dims) if fortran else stats


def _with_margins(chunks: tuple[int, ...], start: int, T: int) -> tuple[int, ...]:
    """Chunks of a window starting at ``start`` padded to all ``T`` frames by one chunk before
    and one after (when not empty)."""
    tail = T - start - sum(chunks)
    return ((start,) if start else ()) + chunks + ((tail,) if tail else ())


def _from_y_parts(mv: MovieLike, corr: bool, start: int, stop: int) -> list[Any]:
    """Per-block delayed statistics of a movie ``Y + factored``, frames ``start:stop``,
    straight from ``Y``'s blocks.

    One task per canonical block (:func:`canonical_frames`, from ``start``) computes its block
    in the pixel order ``Y``'s block arrives in (CaImAn's Fortran order for a frame-major
    memmap: no transpose at all) and reduces it at once; only the per-pixel statistics are
    reordered, bit for bit the same as reducing C-ordered frames. ``Y``'s blocks are free views
    of its file for CaImAn memmaps, re-chunked otherwise.
    """
    desc = mv.description
    m = desc.model
    dt = np.dtype(mv.dtype)
    layout, blocks, ys = _margin_blocks(mv, start, stop, corr)
    traces = [blocks(t) for t in trace_blocks(desc, layout)]
    cs = [list(c) for c in zip(*traces, strict=True)] if traces else [[] for _ in ys]
    fb = f_blocks(desc, layout)
    fs: list[Any] = [None] * len(ys) if fb is None else blocks(fb)
    opsA = [footprint_op(desc, dt, o).to_delayed().ravel()[0] for o in ("C", "F")]
    bops = [background_op(desc, dt, o) for o in ("C", "F")]
    opsB = [None if b is None else b.to_delayed().ravel()[0] for b in bops]
    if fused(desc, corr):  # the fused one-pass kernel, its operators prepared once per layout
        prep = dask.delayed(prepare_moments, pure=True)
        mops = [prep(opsA[0], opsB[0]), prep(opsA[1], opsB[1])]
        moments = dask.delayed(_residual_block_moments, pure=True)
        return [
            moments(yb, *mops, cb, f, dims=m.dims, corr=corr)
            for yb, cb, f in zip(ys, cs, fs, strict=True)
        ]
    fn = dask.delayed(_residual_block_stats, pure=True)
    return [
        fn(yb, opsA[0], opsA[1], opsB[0], opsB[1], cb, f, dims=m.dims, out_dtype=dt)
        for yb, cb, f in zip(ys, cs, fs, strict=True)
    ]


def _margin_blocks(
    mv: MovieLike, start: int, stop: int, corr: bool
) -> tuple[tuple[int, ...], Callable[[da.Array], list[Any]], list[Any]]:
    """The canonical blocks of a window with their margins (see :func:`_with_margins`): the
    layout, a function listing an array's delayed blocks of the window, and ``Y``'s (free
    views of the file for CaImAn memmaps)."""
    desc = mv.description
    m = desc.model
    inner = canonical_chunks(stop - start, canonical_frames(mv, corr))
    layout = _with_margins(inner, start, m.T)
    y_arr = None if m.movie_source is None else m.movie_source.in_time_chunks(layout)
    if y_arr is None:
        y_arr = y_blocks(desc, layout)
    sel = slice(1 if start else 0, len(layout) - (1 if stop < m.T else 0))  # drop the margins

    def blocks(arr: da.Array) -> list[Any]:
        return list(arr.to_delayed().ravel())[sel]

    return layout, blocks, blocks(y_arr)


@_quiet
def _ring_block(y: np.ndarray, ring: Any, C: np.ndarray, coefs: list[Any]) -> Any:
    return (*ring_block_stats_as_stored(y, ring[0], C, coefs), ring[0].dims)


@_quiet
def _merge_lists(a: Any, b: Any) -> Any:
    """Merge two blocks' ``(fortran, [stats...], dims)``, in the blocks' own pixel order when
    they agree (reordered once, at the end: :func:`_ring_c_order`)."""
    (fa, sa, dims), (fb, sb, _) = a, b
    if fa != fb:
        sa, sb = _ring_c_order(a), _ring_c_order(b)
    merged = [_streaming.merge_stats(x, y) for x, y in zip(sa, sb, strict=True)]
    return (fa and fb, merged, dims)


def _ring_c_order(part: Any) -> list[Any]:
    fortran, stats, dims = part
    return [to_c_order(s, dims) for s in stats] if fortran else stats


def _ring_graph(movies: Sequence[MovieLike], window: Window) -> Any:
    """A delayed list of the statistics of ring-model movies of one model, dtype and window
    (each ``cy·Y + ca·A·C + cr·B``: :func:`~._ring_pass.ring_coefficients`), all from one
    task per canonical block that computes the background once."""
    mv = movies[0]
    desc, dt = mv.description, np.dtype(mv.dtype)
    assert window.span is not None
    layout, blocks, ys = _margin_blocks(mv, *window.span, False)
    cs = blocks(desc.model.C.rechunk({0: -1, 1: layout}))
    op = ring_op(desc, dt).to_delayed().ravel()[0]
    coefs = [ring_coefficients(m.description) for m in movies]
    fn = dask.delayed(_ring_block, pure=True)
    parts = [fn(yb, op, cb, coefs) for yb, cb in zip(ys, cs, strict=True)]
    merged = merge_tree(parts, dask.delayed(_merge_lists, pure=True))
    return dask.delayed(_ring_c_order, pure=True)(merged)


def _ring_group(mv: MovieLike, window: Window, corr: bool) -> Any:
    """The key under which ring-model movies share one pass (``None``: the movie takes its
    own)."""
    if corr or window.span is None or ring_coefficients(mv.description) is None:
        return None
    return (mv.description.model.token, np.dtype(mv.dtype).str, window.key)


def _stream_graph(mv: MovieLike, window: Window, corr: bool) -> Any:
    """A delayed reduction of a streaming movie's statistics over ``window``, block by
    canonical block (:func:`canonical_frames`), merged in :func:`merge_tree`'s order."""
    desc = mv.description
    if desc.y == 1.0 and desc.ring == 0.0 and window.span is not None:
        return merge_tree(_from_y_parts(mv, corr, *window.span))
    if _ring_group(mv, window, corr) is not None:
        return dask.delayed(operator.itemgetter(0))(_ring_graph([mv], window))
    frames = canonical_frames(mv, corr)
    if window.span is not None:
        start, stop = window.span
        layout = _with_margins(canonical_chunks(stop - start, frames), start, mv.shape[0])
        data = movie_graph(desc, mv.dtype, layout)
        sel = slice(1 if start else 0, len(layout) - (1 if stop < mv.shape[0] else 0))
        stats_of = dask.delayed(_block_stats, pure=True)
        blocks = list(data.to_delayed().ravel())[sel]
        return merge_tree([stats_of(b, corr=corr) for b in blocks])
    data = mv.data[window.index]
    return stats_of_blocks(data.rechunk({0: canonical_chunks(len(window.times), frames)}), corr)


def images(
    stats: dict[str, Any], kinds: Iterable[Kind], movie: MovieLike | None = None
) -> dict[str, np.ndarray]:
    """Images ``{kind: image}`` from merged streaming statistics (see
    :func:`_streaming.finalize`); with ``movie``, pixels holding non-finite values get NaN
    images and one warning says how many (as :func:`project` does)."""
    wanted = tuple(kinds)
    out = _finalize(stats, (*wanted, "mean"))
    if movie is not None:
        _mark_nonfinite(out, movie, None)
    return {k: out[k] for k in wanted}


def _cached(mv: MovieLike, window: Window, corr: bool) -> dict[str, Any] | None:
    ident = _identity(mv)
    hit = _STATS.get((ident, window.key, True))
    if hit is None and not corr:
        hit = _STATS.get((ident, window.key, False))
    return hit


def forget_statistics() -> None:
    """Drop every cached statistic and factored operator (the next projection, ``min`` or
    ``max`` computes them again). Statistics are cached by what a movie is made of, so two
    movies built alike share them; this frees their memory."""
    _STATS.clear()
    _FACTORED.clear()


def remember(mv: MovieLike, corr: bool, stats: dict[str, Any]) -> None:
    """Cache the merged statistics of all of ``mv``'s frames (computed elsewhere, e.g. by an
    export from the very blocks it wrote)."""
    _STATS.put((_identity(mv), frame_window(None, mv.shape[0]).key, corr), stats)


# ---------------------------------------------------------------------------------------------
# The public face
# ---------------------------------------------------------------------------------------------


def project(
    movie: MovieLike | Sequence[MovieLike],
    kind: Kind | Sequence[Kind] = "mean",
    *,
    frames: Any = None,
    progress: bool | None = None,
) -> Any:
    """Exact projections over time of a lazy movie (or of several movies in one pass).

    Parameters
    ----------
    movie
        A lazy movie (:func:`caiman_dask.rcm`, :func:`~caiman_dask.rcb`,
        :func:`~caiman_dask.residuals`, :func:`~caiman_dask.raw`, or an expression of them
        such as ``cd.rcm(m) + cd.rcb(m)``), or a list of them: the streaming ones then share
        one pass over the movie ``Y``.
    kind
        ``"mean"``, ``"std"`` (population, ddof=0), ``"min"``, ``"max"`` or ``"corr"``
        (CaImAn's ``local_correlations`` image, its conventions included: 8 neighbours in 2D,
        6 face neighbours in 3D, NaN where a pixel or a neighbour it uses is constant), or a
        sequence of them.
    frames
        A time window: ``None`` (all), a slice, int indices or a boolean mask. Empty or
        out-of-range windows raise :class:`~caiman_dask.OptionError`.
    progress
        Show a progress bar for streaming passes.

    Returns
    -------
    numpy.ndarray or dict or list
        A float64 image shaped ``dims`` for one kind, a ``{kind: image}`` dict for several,
        and a list of those for a list of movies.

    Notes
    -----
    All results are exact (up to float64 rounding). Factored movies (RCM, low-rank RCB and
    their sums and multiples) are projected from their factors and never materialise the
    movie; movies with ``Y`` or a ring background take one streaming pass whose statistics are
    cached, so further kinds cost nothing (``"corr"`` needs neighbour co-moments: asking for
    it first makes the pass collect them). An empty movie (an empty component selection,
    ``a − a``) gives zero images (``"corr"``: NaN, as CaImAn gives for a constant movie).

    A pixel holding a non-finite value (NaN, inf) in the window gets NaN in every image, min
    and max included; one :class:`~caiman_dask.NaNWarning` per call gives their number.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(32, 40), T=60, K=6, seed=0)
    >>> cd.project(cd.rcm(m), "max").shape
    (32, 40)
    >>> sorted(cd.project(cd.residuals(m) - cd.rcm(m, "bad"), ["mean", "std"]))
    ['mean', 'std']
    """
    single = _is_movie(movie)
    movies: list[Any] = [movie] if single else list(movie)  # type: ignore[arg-type]
    for mv in movies:
        if not _is_movie(mv):
            raise OptionError(
                "project() takes caiman_dask movies (cd.rcm / cd.rcb / cd.residuals / cd.raw, "
                f"or sums of them), got {type(mv).__name__}"
            )
    kinds = _kinds(kind)
    corr = "corr" in kinds
    results: list[dict[str, np.ndarray] | None] = []
    pending: list[list[tuple[int, MovieLike, Window]]] = []
    graphs: list[Any] = []
    with_mean = tuple(dict.fromkeys((*kinds, "mean")))  # (the mean tells non-finite pixels)
    rings: dict[Any, list[tuple[int, MovieLike, Window]]] = {}
    for i, mv in enumerate(movies):
        window = frame_window(frames, mv.shape[0])
        if not mv.description.streaming:
            results.append(_factored_project(mv.description, with_mean, window))
            continue
        stats = _cached(mv, window, corr)
        results.append(None if stats is None else _finalize(stats, with_mean))
        if stats is None:
            group = _ring_group(mv, window, corr)
            if group is not None:  # ring-model movies of one model share their background
                rings.setdefault(group, []).append((i, mv, window))
                continue
            pending.append([(i, mv, window)])
            graphs.append(dask.delayed(list)([_stream_graph(mv, window, corr)]))
    for members in rings.values():
        pending.append(members)
        graphs.append(_ring_graph([mv for _, mv, _ in members], members[0][2]))
    for members, stats_list in zip(pending, compute(graphs, bool(progress)), strict=True):
        for (i, mv, window), stats in zip(members, stats_list, strict=True):
            _STATS.put((_identity(mv), window.key, corr), stats)
            results[i] = _finalize(stats, with_mean)
    out: list[dict[str, np.ndarray]] = []
    for mv, r in zip(movies, results, strict=True):
        assert r is not None
        _mark_nonfinite(r, mv, frames)
        out.append({k: r[k] for k in kinds})
    imgs = [r if not isinstance(kind, str) else r[kind] for r in out]
    return imgs[0] if single else imgs


def _mark_nonfinite(imgs: dict[str, np.ndarray], mv: MovieLike, frames: Any) -> None:
    """Pixels holding a non-finite value (NaN, inf) in the window have a non-finite mean; make
    their min and max NaN too (one rule for every image) and say so once, with counts."""
    bad = ~np.isfinite(imgs["mean"])
    n = int(bad.sum())
    if not n:
        return
    for k in ("mean", "std", "min", "max", "corr"):
        if k in imgs:
            imgs[k][bad] = np.nan
    where = "all frames" if frames is None else f"frames={frames!r}"
    warnings.warn(
        f"{getattr(mv, 'kind', 'movie')}: {n} of {bad.size} pixels hold non-finite values (NaN "
        f"or inf) in {where}; their mean, std, min, max and corr are NaN (movie.min / movie.max "
        "ignore them). Look for NaN / inf in the movie Y or the factors (np.isfinite).",
        NaNWarning,
        stacklevel=3,
    )


def nonfinite_pixels(movie: MovieLike) -> int:
    """How many pixels of the whole movie hold a non-finite value (NaN, inf) in some frame
    (from the statistics :func:`min_max` uses; cached)."""
    min_max(movie)
    hit = _STATS.get(("nonfinite", _identity(movie)))
    return int(hit) if hit is not None else 0


def cached_min_max(movie: MovieLike) -> tuple[float, float] | None:
    """:func:`min_max` if it is cached, else ``None`` (never computes anything)."""
    hit = _STATS.get(("min_max", _identity(movie)))
    return None if hit is None else (float(hit[0]), float(hit[1]))


def min_max(movie: MovieLike) -> tuple[float, float]:
    """Exact minimum and maximum over a whole movie (cached).

    Pixels holding a non-finite value (NaN, inf) are left out (:func:`project` warns about
    them with counts); NaN when every pixel holds one."""
    key = ("min_max", _identity(movie))
    hit = _STATS.get(key)
    if hit is None:
        img = project(movie, ["min", "max"])
        lo, hi = img["min"], img["max"]
        finite = np.isfinite(lo)
        _STATS.put(("nonfinite", _identity(movie)), int(finite.size - finite.sum()))
        if not finite.any():  # every pixel holds a non-finite value (reported by project)
            hit = (math.nan, math.nan)
        else:
            hit = (float(lo[finite].min()), float(hi[finite].max()))
        _STATS.put(key, hit)
    return hit
