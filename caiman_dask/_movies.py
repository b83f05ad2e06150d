"""Lazy movies: RCM ``A·C``, RCB (low-rank ``b·f``) and residuals ``Y − A·C − B``.

A movie knows the factors it is made of, so

- ``movie[key]`` pushes the index down: it slices ``C``, ``f`` and ``Y`` in time first (and the
  footprints in space for crops), multiplies only that, and returns a C-contiguous NumPy array;
- ``movie.data`` is a dask array built with ``blockwise`` over time chunks; building it
  computes nothing and embeds no factor (factors reach tasks as dask arrays);
- ``shape``, ``dtype``, ``ndim``, ``size``, ``len()``, ``min``, ``max`` serve viewers
  (fastplotlib's ``ImageWidget``, napari) without scanning the movie.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from itertools import pairwise
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _buffers
from ._io import default_frame_chunk, sparse_to_scipy
from ._kernels import (
    c_to_f_permutation,
    frames,
    fused,
    gather_pixel_major,
    n_bands,
    pixel_major,
    residual_bands,
)
from ._model import TRACE_NAMES, CNMFModel, Components
from .errors import ComponentError, EmptyComponentsWarning, OptionError, ShapeMismatchError

__all__ = ["RCB", "RCM", "Movie", "Raw", "Residuals", "raw", "rcb", "rcm", "residuals"]

#: Frames computed per inner step of a large slice (bounds temporaries, keeps cache-friendly).
_FRAME_BLOCK = 32
#: Requests of at least this many output pixels are split across threads (the kernels release
#: the GIL); smaller ones run inline, where a thread hand-off would cost more than it saves.
_PARALLEL_PIXELS = 4_000_000
#: Frames of at least this many bands (``_kernels._BAND`` pixels) are shared by the cores when a
#: request has fewer frames than cores: each core takes a share of the bands.
_PARALLEL_BANDS = 4
_POOL: ThreadPoolExecutor | None = None
_CORES = os.cpu_count() or 1
#: Time chunks per task of the fused residual-statistics pass when chunks are free file views.
_STATS_GROUP = 8


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_CORES, thread_name_prefix="caiman-dask-frames")
    return _POOL


def _shares(n: int, parts: int) -> list[int]:
    """Edges of ``parts`` near-equal shares of ``range(n)``."""
    return [k * n // parts for k in range(parts + 1)]


def _in_parallel(run: Any, parts: list[Any]) -> None:
    """``run(part)`` for every part: the first on this thread, the others on the pool."""
    futures = [_pool().submit(run, p) for p in parts[1:]]
    run(parts[0])
    for fut in futures:
        fut.result()


class _Cropped:
    """A spatial selection pushed down to the factors: pixel ids in C order + output shape."""

    __slots__ = ("drop", "pix", "sel", "shape")

    def __init__(
        self,
        pix: np.ndarray | None,
        shape: tuple[int, ...],
        drop: tuple[bool, ...],
        sel: tuple[slice, ...] = (),
    ):
        self.pix = pix  # None = full frame
        self.shape = shape  # crop shape (int axes kept with length 1)
        self.drop = drop  # axes indexed by an int (dropped from the result)
        self.sel = sel  # per-axis slices reading the crop from a movie


class Movie:
    """Base class of the lazy movies; see :func:`rcm`, :func:`rcb`, :func:`residuals`.

    Subclasses implement ``_fill(out, times, crop)`` (frames into a C-ordered buffer) and
    ``_block`` (the dask block function).
    """

    kind: str = "movie"

    def __init__(self, model: CNMFModel, *, dtype: Any, frame_chunk: int | None) -> None:
        self.model = model
        self._dtype = np.dtype(dtype)
        if self._dtype.kind != "f":
            raise OptionError(f"dtype must be a floating type (float32 or float64), got {dtype}")
        self._frame_chunk = frame_chunk
        self._ops: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ array protocol
    @property
    def shape(self) -> tuple[int, ...]:
        """``(T, *dims)``."""
        return (self.model.T, *self.model.dims)

    @property
    def dtype(self) -> np.dtype:
        """Output dtype (float64 when any factor is float64, else float32, unless chosen)."""
        return self._dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self.model.dims)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        return self.model.T

    def __repr__(self) -> str:
        return (
            f"<caiman_dask.{type(self).__name__} {self.kind} shape={self.shape} "
            f"dtype={self.dtype} ({self.nbytes / 2**30:.2f} GiB if dense)>"
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key: Any) -> np.ndarray:
        """NumPy frames for any basic index, int arrays / boolean masks in time, ``...``.

        The index is pushed down: only the requested frames (and, for crops, pixels) are
        computed. Advanced indices on spatial axes are applied after computing full frames.
        """
        tkey, spatial = _normalize_key(key, self.shape)
        times, tsel = _time_positions(tkey, self.shape[0])
        basic = all(isinstance(k, slice | int) for k in spatial)
        if basic:
            crop = self._crop(spatial)
            block = self._frames(times, crop)
            tail = tuple(0 if d else slice(None) for d in crop.drop)
            out = block[(tsel, *tail)]
        else:
            block = self._frames(times, _Cropped(None, self.model.dims, (False,) * len(spatial)))
            out = block[(tsel, *spatial)]
        if out.ndim == 0:
            return out[()]
        return out if out.flags.c_contiguous else np.ascontiguousarray(out)

    def _crop(self, spatial: tuple[Any, ...]) -> _Cropped:
        dims = self.model.dims
        if all(isinstance(k, slice) and k == slice(None) for k in spatial):
            return _Cropped(None, dims, (False,) * len(dims))
        ranges = []
        drop = []
        sel = []
        for ax, (k, d) in enumerate(zip(spatial, dims, strict=True), start=1):
            if isinstance(k, int):
                if not -d <= k < d:
                    raise IndexError(f"index {k} is out of bounds for axis {ax} with size {d}")
                ranges.append(np.array([k % d]))
                drop.append(True)
                sel.append(slice(k % d, k % d + 1))
            else:
                ranges.append(np.arange(d)[k])
                drop.append(False)
                sel.append(k)
        grids = np.meshgrid(*ranges, indexing="ij")
        pix = np.ravel_multi_index(tuple(g.ravel() for g in grids), dims)
        return _Cropped(
            pix.astype(np.int64), tuple(len(r) for r in ranges), tuple(drop), tuple(sel)
        )

    def _frames(self, times: np.ndarray, crop: _Cropped) -> np.ndarray:
        """Frames ``times`` restricted to ``crop`` as ``(n, *crop.shape)`` in ``self.dtype``."""
        n = len(times)
        npix = math.prod(crop.shape)
        out = _buffers.empty((n, npix), self._dtype)  # ≥ 1 MiB: recycled, already mapped

        def run(part: slice) -> None:
            for s in range(part.start, part.stop, _FRAME_BLOCK):
                sl = slice(s, min(part.stop, s + _FRAME_BLOCK))
                self._fill(out[sl], times[sl], crop)

        if _CORES == 1 or n < 2 or n * npix < _PARALLEL_PIXELS:
            run(slice(0, n))
            return out.reshape((n, *crop.shape))
        # equal shares, one per core (blocks of 32 would leave one core idle at the end)
        _in_parallel(run, [slice(a, b) for a, b in pairwise(_shares(n, min(_CORES, n)))])
        return out.reshape((n, *crop.shape))

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: _Cropped) -> None:
        raise NotImplementedError

    def _op(self, key: Any, build: Any) -> Any:
        """A per-crop prepared operator, cached (LRU of 8)."""
        with self._lock:
            if key in self._ops:
                self._ops.move_to_end(key)
                return self._ops[key]
        value = build()
        with self._lock:
            self._ops[key] = value
            while len(self._ops) > 8:
                self._ops.popitem(last=False)
        return value

    # ------------------------------------------------------------------ dask
    @property
    def time_chunks(self) -> tuple[int, ...]:
        """Time chunks of ``.data`` (the movie's chunks when there is one)."""
        m = self.model
        if self._frame_chunk is None and m.Y is not None:
            return tuple(int(c) for c in m.Y.chunks[0])
        frames = self._frame_chunk or default_frame_chunk(m.dims, self._dtype.itemsize)
        T = m.T
        full, rest = divmod(T, frames)
        return (frames,) * full + ((rest,) if rest else ())

    @cached_property
    def data(self) -> da.Array:
        """The movie as a dask array ``(T, *dims)``: ``blockwise`` over time chunks.

        Building it computes nothing; names are deterministic; factors enter as dask arrays.
        """
        return self._build_dask()

    def _build_dask(self) -> da.Array:
        raise NotImplementedError

    def _y_blocks(self) -> tuple[da.Array, str]:
        """The movie ``Y`` in this movie's time chunks, with its blockwise index."""
        y = self.model.Y
        assert y is not None
        tc = self.time_chunks
        y = y if tuple(y.chunks[0]) == tc else y.rechunk({0: tc})
        return y, "t" + "ijl"[: len(self.model.dims)]

    # ------------------------------------------------------------------ min / max
    @property
    def min(self) -> float:
        """Minimum over the whole movie (exact; see :func:`caiman_dask.project`)."""
        return self._minmax()[0]

    @property
    def max(self) -> float:
        """Maximum over the whole movie (exact; see :func:`caiman_dask.project`)."""
        return self._minmax()[1]

    def _minmax(self) -> tuple[float, float]:
        from ._projections import movie_min_max

        return movie_min_max(self)


# ---------------------------------------------------------------------------------------------
# Operators prepared once per graph (dask) or per movie (fast path)
# ---------------------------------------------------------------------------------------------


def _prepare_footprints(
    blocks: list[Any],
    idx: np.ndarray,
    dims: tuple[int, ...],
    dtype: np.dtype,
    order: str = "C",
) -> scipy.sparse.csc_matrix:
    """CSC ``A[:, idx]`` with rows in C pixel order (or CaImAn's F order), values in ``dtype``."""
    A = scipy.sparse.hstack([sparse_to_scipy(b) for b in blocks]).tocsr() if blocks else None
    P = math.prod(dims)
    if A is None or A.shape[1] == 0:
        return scipy.sparse.csc_matrix((P, len(idx)), dtype=dtype)
    A = (A[c_to_f_permutation(dims)] if order == "C" else A)[:, idx]
    return scipy.sparse.csc_matrix(A, dtype=dtype)


def _prepare_background(
    b: np.ndarray, dims: tuple[int, ...], dtype: np.dtype, order: str = "C"
) -> np.ndarray:
    b = np.asarray(b)
    return np.ascontiguousarray(b[c_to_f_permutation(dims)] if order == "C" else b, dtype=dtype)


def _op_array(name: str, func: Any, arrays: da.Array | list[da.Array], *args: Any) -> da.Array:
    """A one-chunk dask array whose block is ``func(blocks, *args)``.

    ``blocks`` is the list of all blocks of ``arrays`` (or, for a list of arrays, a list of
    such lists): operators derived from factors (e.g. footprints permuted to C order) are
    built once per computation, from the factors' own (file-reading) tasks.
    """
    many = isinstance(arrays, list)
    arrs = arrays if many else [arrays]
    keys: Any = [_flat_keys(a) for a in arrs]
    layer = {(name, 0): (func, keys if many else keys[0], *args)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=arrs)
    return da.Array(graph, name, chunks=((1,),), dtype=object, meta=np.empty((0,), object))


def _flat_keys(arr: da.Array) -> list[Any]:
    keys = arr.__dask_keys__()
    out: list[Any] = []

    def walk(x: Any) -> None:
        if isinstance(x, list):
            for y in x:
                walk(y)
        else:
            out.append(x)

    walk(keys)
    return out


def _single(x: Any) -> Any:
    while isinstance(x, list):
        if len(x) != 1:
            return np.concatenate([_single(y) for y in x], axis=0)
        x = x[0]
    return x


def _no_footprints(npix: int, dtype: np.dtype) -> scipy.sparse.csc_matrix:
    return scipy.sparse.csc_matrix((npix, 0), dtype=dtype)


def _rcm_block(op: Any, c: Any, *, dims: tuple[int, ...], out_dtype: np.dtype) -> np.ndarray:
    c = np.asarray(_single(c))
    out = np.empty((c.shape[1], math.prod(dims)), out_dtype)
    frames(out, _single(op), c.T)
    return out.reshape((c.shape[1], *dims))


def _rcb_block(op: Any, f: Any, *, dims: tuple[int, ...], out_dtype: np.dtype) -> np.ndarray:
    f = np.asarray(_single(f))
    n, P = f.shape[1], math.prod(dims)
    out = np.empty((n, P), out_dtype)
    frames(out, _no_footprints(P, out_dtype), np.zeros((n, 0)), _single(op), f.T)
    return out.reshape((n, *dims))


def _residual_block(
    y: Any,
    opA: Any,
    c: Any,
    opB: Any = None,
    f: Any = None,
    *,
    dims: tuple[int, ...],
    out_dtype: np.dtype,
) -> np.ndarray:
    y = _single(y)
    n = y.shape[0]
    out = np.empty((n, math.prod(dims)), out_dtype)
    ft = None if f is None else np.asarray(_single(f)).T
    frames(out, _single(opA), np.asarray(_single(c)).T, _single(opB), ft, y)
    return out.reshape((n, *dims))


def _block_layout(y: np.ndarray, dims: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """A movie block as rows ``(n, npix)`` without copying when it is stored transposed
    (frame-major memmap: CaImAn's Fortran pixel order); ``True`` in that case."""
    n = y.shape[0]
    reverse = (0, *range(y.ndim - 1, 0, -1))
    if not y.flags.c_contiguous and y.transpose(reverse).flags.c_contiguous:
        return y.transpose(reverse).reshape(n, -1), True
    return np.ascontiguousarray(y).reshape(n, -1), False


def _residual_block_moments(
    y: np.ndarray, mop_C: Any, mop_F: Any, c: np.ndarray, f: np.ndarray | None, *, dims: tuple
) -> dict[str, Any]:
    """Mean / M2 / min / max of one block of residuals in one fused pass (never stored)."""
    from ._kernels import MomentsState
    from ._streaming import stats_to_c_order

    rows, fortran = _block_layout(y, dims)
    state = MomentsState(mop_F if fortran else mop_C)
    state.update(rows, np.asarray(c).T, None if f is None else np.asarray(f).T)
    shape = dims[::-1] if fortran else dims
    stats = {k: v if k == "n" else v.reshape(shape) for k, v in state.result().items()}
    return stats_to_c_order(stats, dims) if fortran else stats


def _clip_chunks(chunks: tuple[int, ...], start: int, stop: int) -> tuple[int, ...]:
    """The parts of time chunks ``chunks`` inside frames ``start:stop`` (non-empty)."""
    edges = np.concatenate([[0], np.cumsum(chunks)])
    lo = np.clip(edges[:-1], start, stop)
    hi = np.clip(edges[1:], start, stop)
    return tuple(int(n) for n in hi - lo if n > 0)


def _with_margins(chunks: tuple[int, ...], start: int, T: int) -> tuple[int, ...]:
    """Chunks of a window starting at ``start`` padded to all ``T`` frames by one chunk before
    and one after (when not empty)."""
    tail = T - start - sum(chunks)
    return ((start,) if start else ()) + chunks + ((tail,) if tail else ())


def _group_chunks(chunks: tuple[int, ...], group: int) -> tuple[int, ...]:
    """Consecutive runs of ``group`` chunks merged into one."""
    return tuple(sum(chunks[i : i + group]) for i in range(0, len(chunks), group))


def _residual_block_stats(
    y: np.ndarray,
    opA_C: Any,
    opA_F: Any,
    opB_C: Any,
    opB_F: Any,
    c: np.ndarray,
    f: np.ndarray | None,
    *,
    dims: tuple[int, ...],
    out_dtype: np.dtype,
) -> dict[str, Any]:
    """Statistics with neighbour co-moments of one block of residuals, in its own layout."""
    from ._streaming import block_stats, stats_to_c_order

    rows, fortran = _block_layout(y, dims)
    A, b = (opA_F, opB_F) if fortran else (opA_C, opB_C)
    n = y.shape[0]
    out = np.empty((n, math.prod(dims)), out_dtype)
    frames(out, A, np.asarray(c).T, b, None if f is None else np.asarray(f).T, rows)
    stats = block_stats(out.reshape((n, *(dims[::-1] if fortran else dims))), corr=True)
    return stats_to_c_order(stats, dims) if fortran else stats


# ---------------------------------------------------------------------------------------------
# RCM
# ---------------------------------------------------------------------------------------------


class RCM(Movie):
    """The reconstructed movie ``A[:, idx] · traces[idx]`` (see :func:`rcm`)."""

    kind = "rcm"

    def __init__(
        self,
        model: CNMFModel,
        idx: np.ndarray,
        traces: da.Array,
        traces_name: str,
        *,
        dtype: Any,
        frame_chunk: int | None,
    ) -> None:
        super().__init__(model, dtype=dtype, frame_chunk=frame_chunk)
        self.idx = idx
        self.traces = traces
        self.traces_name = traces_name

    @cached_property
    def traces_selected(self) -> np.ndarray:
        """The selected traces ``(K_sel, T)`` in their stored dtype (in memory)."""
        if self.traces_name == "C":
            C = self.model._host.C
        else:
            C = np.asarray(self.traces.compute(scheduler="sync"))
        return C[self.idx]

    @cached_property
    def _Ct(self) -> np.ndarray:
        """Selected traces, ``(T, K_sel)`` C-contiguous in the compute dtype."""
        return np.ascontiguousarray(self.traces_selected.T, dtype=self._dtype)

    def _footprints(self, crop: _Cropped) -> scipy.sparse.csc_matrix:
        def build() -> scipy.sparse.csc_matrix:
            A = self.model._host.A  # CSR, C order
            if crop.pix is not None:
                A = A[crop.pix]
            return scipy.sparse.csc_matrix(A[:, self.idx], dtype=self._dtype)

        return self._op(("A", None if crop.pix is None else crop.pix.tobytes()), build)

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: _Cropped) -> None:
        frames(out, self._footprints(crop), self._Ct[times])

    def footprint_op(self, order: str = "C") -> tuple[da.Array, str]:
        """One-block dask array: the selected footprints in C (or F) pixel order, built once."""
        m = self.model
        name = f"rcm-A-{tokenize(m.A.name, self.idx, m.dims, self._dtype, order)}"
        op = _op_array(name, _prepare_footprints, m.A, self.idx, m.dims, self._dtype, order)
        return op, "z"

    def trace_blocks(self, chunks: tuple[int, ...] | None = None) -> tuple[da.Array, str]:
        """The selected traces in time chunks ``chunks`` (default: this movie's), with their
        blockwise index."""
        return self.traces[self.idx].rechunk({0: -1, 1: chunks or self.time_chunks}), "kt"

    def _build_dask(self) -> da.Array:
        m = self.model
        tok = tokenize(m.token, self.idx, self.traces.name, self._dtype, self.time_chunks)
        return _blockwise_frames(
            f"rcm-{tok}", _rcm_block, m.dims, self._dtype, self.footprint_op(), self.trace_blocks()
        )


def _blockwise_frames(
    name: str, func: Any, dims: tuple[int, ...], dtype: np.dtype, *args: tuple[Any, str], **kw: Any
) -> da.Array:
    letters = "ijl"[: len(dims)]
    flat: list[Any] = []
    for arr, ind in args:
        flat.extend([arr, ind])
    return da.blockwise(
        func,
        "t" + letters,
        *flat,
        new_axes=dict(zip(letters, dims, strict=True)),
        concatenate=False,
        dtype=dtype,
        meta=np.empty((0,) * (1 + len(dims)), dtype),
        name=name,
        dims=dims,
        out_dtype=dtype,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# RCB (low rank)
# ---------------------------------------------------------------------------------------------


class RCB(Movie):
    """The low-rank reconstructed background ``b · f`` (see :func:`rcb`)."""

    kind = "rcb"

    @cached_property
    def _ft(self) -> np.ndarray:
        f = self.model._host.f
        assert f is not None
        return np.ascontiguousarray(f.T, dtype=self._dtype)

    def _background(self, crop: _Cropped) -> np.ndarray:
        def build() -> np.ndarray:
            b = self.model._host.b
            assert b is not None
            b = b if crop.pix is None else b[crop.pix]
            return np.ascontiguousarray(b, dtype=self._dtype)

        return self._op(("b", None if crop.pix is None else crop.pix.tobytes()), build)

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: _Cropped) -> None:
        frames(
            out,
            _no_footprints(out.shape[1], self._dtype),
            np.zeros((len(times), 0)),
            self._background(crop),
            self._ft[times],
        )

    def background_op(self, order: str = "C") -> tuple[da.Array, str]:
        """One-block dask array: ``b`` in C (or F) pixel order, built once."""
        m = self.model
        assert m.b is not None
        name = f"rcb-b-{tokenize(m.b.name, m.dims, self._dtype, order)}"
        return _op_array(name, _prepare_b_blocks, m.b, m.dims, self._dtype, order), "w"

    def f_blocks(self, chunks: tuple[int, ...] | None = None) -> tuple[da.Array, str]:
        """``f`` in time chunks ``chunks`` (default: this movie's), with its blockwise index."""
        assert self.model.f is not None
        return self.model.f.rechunk({0: -1, 1: chunks or self.time_chunks}), "nt"

    def _build_dask(self) -> da.Array:
        m = self.model
        tok = tokenize(m.token, self._dtype, self.time_chunks)
        return _blockwise_frames(
            f"rcb-{tok}", _rcb_block, m.dims, self._dtype, self.background_op(), self.f_blocks()
        )


def _prepare_b_blocks(
    blocks: list[Any], dims: tuple[int, ...], dtype: np.dtype, order: str = "C"
) -> np.ndarray:
    b = np.concatenate([np.asarray(blk) for blk in blocks], axis=0)
    return _prepare_background(b, dims, dtype, order)


# ---------------------------------------------------------------------------------------------
# Residuals
# ---------------------------------------------------------------------------------------------


class _FromMovie(Movie):
    """Frames computed from the movie ``Y`` (residuals, the raw movie): ``Y``'s frames are read
    as views of the file, then one frame kernel (:func:`~._kernels.frames`) reorders them into
    C order and subtracts what :meth:`_operands` gives."""

    def _read_y(self, times: np.ndarray, crop: _Cropped) -> np.ndarray:
        src = self.model.movie_source
        assert src is not None
        return src.read((_time_key(times), *crop.sel))

    def _operands(self, times: np.ndarray, crop: _Cropped, y: np.ndarray) -> tuple[Any, ...]:
        """``A, Ct, b, ft, Y`` of :func:`~._kernels.frames` for frames ``times`` of ``crop``."""
        raise NotImplementedError

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: _Cropped) -> None:
        frames(out, *self._operands(times, crop, self._read_y(times, crop)))

    def _frames(self, times: np.ndarray, crop: _Cropped) -> np.ndarray:
        """Fewer frames than cores (``res[t]``, ``raw[t]``): the cores share each frame, band
        by band (a pixel-major movie's frames are first gathered, pixels split between them)."""
        n, npix = len(times), math.prod(crop.shape)
        few = _CORES > 1 and 0 < n < _CORES and n_bands(npix) >= _PARALLEL_BANDS
        if not few or len(crop.shape) != 2:  # (3D frames: not read here, then again below)
            return super()._frames(times, crop)
        y = self._read_y(times, crop)
        if pixel_major(y, npix):  # a CaImAn order-C memmap: gathered by both cores first
            h, w = y.shape[1:]
            z = _buffers.empty((n, w, h), y.dtype)
            pixels = [range(a, b) for a, b in pairwise(_shares(npix, _CORES))]
            _in_parallel(lambda part: gather_pixel_major(z, y, part), pixels)
            y = z.transpose(0, 2, 1)
        if not fused(y, npix):  # other strided frames (views of the file)
            return super()._frames(times, crop)
        out = _buffers.empty((n, npix), self._dtype)
        args = self._operands(times, crop, y)
        bands = [range(a, b) for a, b in pairwise(_shares(n_bands(npix), _CORES))]
        _in_parallel(lambda part: residual_bands(out, *args, part), bands)
        return out.reshape((n, *crop.shape))


class Residuals(_FromMovie):
    """The residual movie ``Y − A·C − B`` (see :func:`residuals`)."""

    kind = "residuals"

    def __init__(self, model: CNMFModel, *, dtype: Any, frame_chunk: int | None) -> None:
        super().__init__(model, dtype=dtype, frame_chunk=frame_chunk)
        self._rcm = RCM(
            model, model.components("all"), model.C, "C", dtype=dtype, frame_chunk=frame_chunk
        )
        self._rcb = RCB(model, dtype=dtype, frame_chunk=frame_chunk) if model.nb else None

    def _operands(self, times: np.ndarray, crop: _Cropped, y: np.ndarray) -> tuple[Any, ...]:
        rcb = self._rcb
        return (
            self._rcm._footprints(crop),
            self._rcm._Ct[times],
            None if rcb is None else rcb._background(crop),
            None if rcb is None else rcb._ft[times],
            y,
        )

    def stats_parts(self, corr: bool, window: tuple[int, int] | None = None) -> list[Any]:
        """Per-time-block delayed statistics of the residuals, straight from ``Y``'s blocks.

        Each task computes its residual block in the pixel order the movie's block arrives in
        (CaImAn's Fortran order for a frame-major memmap: no transpose at all) and reduces it
        at once; only the per-pixel statistics are reordered, which is bitwise the same as
        reducing C-ordered frames. Without ``corr`` the fused kernel folds whole runs of
        :data:`_STATS_GROUP` time chunks into one state when ``Y``'s blocks are free views
        of its file (CaImAn memmaps), so few partial results need merging.

        ``window``: frames ``start:stop`` only (default: all).
        """
        import dask

        T = self.model.T
        start, stop = window if window is not None else (0, T)
        inner = _clip_chunks(self.time_chunks, start, stop)
        y_arr = None
        if not corr and self.model.movie_source is not None:
            grouped = _group_chunks(inner, _STATS_GROUP)
            layout = _with_margins(grouped, start, T)
            y_arr = self.model.movie_source.in_time_chunks(layout)
        if y_arr is None:
            layout = _with_margins(inner, start, T)
            y = self.model.Y
            assert y is not None
            y_arr = y if tuple(y.chunks[0]) == layout else y.rechunk({0: layout})
        sel = slice(1 if start else 0, len(layout) - (1 if stop < T else 0))  # drop margins

        def blocks(arr: da.Array) -> list[Any]:
            return list(arr.to_delayed().ravel())[sel]

        y = blocks(y_arr)
        c = blocks(self._rcm.trace_blocks(layout)[0])
        ops = [self._rcm.footprint_op(o)[0].to_delayed().ravel()[0] for o in ("C", "F")]
        f: list[Any] = [None] * len(y)
        if self._rcb is not None:
            ops += [self._rcb.background_op(o)[0].to_delayed().ravel()[0] for o in ("C", "F")]
            f = blocks(self._rcb.f_blocks(layout)[0])
        else:
            ops += [None, None]
        if not corr:  # the fused one-pass kernel, its operators prepared once per layout
            from ._kernels import prepare_moments

            prep = dask.delayed(prepare_moments, pure=True)
            mops = [prep(ops[0], ops[2]), prep(ops[1], ops[3])]
            moments = dask.delayed(_residual_block_moments, pure=True)
            return [
                moments(yb, *mops, cb, fb, dims=self.model.dims)
                for yb, cb, fb in zip(y, c, f, strict=True)
            ]
        fn = dask.delayed(_residual_block_stats, pure=True)
        return [
            fn(yb, *ops, cb, fb, dims=self.model.dims, out_dtype=self._dtype)
            for yb, cb, fb in zip(y, c, f, strict=True)
        ]

    def _build_dask(self) -> da.Array:
        m = self.model
        tok = tokenize(m.token, self._dtype, self.time_chunks)
        args = [self._y_blocks(), self._rcm.footprint_op(), self._rcm.trace_blocks()]
        if self._rcb is not None:
            args += [self._rcb.background_op(), self._rcb.f_blocks()]
        return _blockwise_frames(f"residuals-{tok}", _residual_block, m.dims, self._dtype, *args)


# ---------------------------------------------------------------------------------------------
# The raw movie
# ---------------------------------------------------------------------------------------------


class Raw(_FromMovie):
    """The movie ``Y`` itself, with the same interface as the reconstructions (see :func:`raw`).

    Frames come from the frame kernel with nothing to subtract (an exact conversion), so the
    movie is reordered as fast as the residuals are computed.
    """

    kind = "raw"

    def _operands(self, times: np.ndarray, crop: _Cropped, y: np.ndarray) -> tuple[Any, ...]:
        npix, n = math.prod(crop.shape), len(times)
        none = self._op(("none", npix), lambda: _no_footprints(npix, self._dtype))
        return none, np.zeros((n, 0), self._dtype), None, None, y

    def _build_dask(self) -> da.Array:
        y = self.model.Y
        assert y is not None
        tc = self.time_chunks
        y = y if tuple(y.chunks[0]) == tc else y.rechunk({0: tc})
        return y if y.dtype == self._dtype else y.astype(self._dtype)


# ---------------------------------------------------------------------------------------------
# Index normalisation
# ---------------------------------------------------------------------------------------------


def _time_key(times: np.ndarray) -> Any:
    """A slice for consecutive frames (zero-copy on memmaps), else the index array.

    ``times`` is sorted and unique, so it is consecutive iff its span equals its length.
    """
    if len(times) and int(times[-1]) - int(times[0]) == len(times) - 1:
        return slice(int(times[0]), int(times[-1]) + 1)
    return times


def _normalize_key(key: Any, shape: tuple[int, ...]) -> tuple[Any, tuple[Any, ...]]:
    """Split an index into a time part and per-axis spatial parts (ints made Python ints)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise IndexError(
            "np.newaxis / None is not supported in a movie index; index first, then add axes "
            "to the NumPy result."
        )
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    ndim = len(shape)
    if n_ell:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(
            f"too many indices for movie: movie is {ndim}-dimensional, but {len(key)} were indexed"
        )
    key = key + (slice(None),) * (ndim - len(key))
    norm = []
    for k in key:
        if isinstance(k, bool | np.bool_):
            raise IndexError("a boolean scalar is not a valid movie index")
        if isinstance(k, int | np.integer):
            norm.append(int(k))
        else:
            norm.append(k)
    return norm[0], tuple(norm[1:])


def _time_positions(tkey: Any, T: int) -> tuple[np.ndarray, Any]:
    """Frames to compute (sorted, unique) and how to pick the result from them."""
    if isinstance(tkey, int):
        if not -T <= tkey < T:
            raise IndexError(f"index {tkey} is out of bounds for axis 0 with size {T}")
        return np.array([tkey % T], dtype=np.int64), 0
    if isinstance(tkey, slice):
        return np.arange(T, dtype=np.int64)[tkey], slice(None)
    arr = (
        np.asarray(tkey, dtype=np.int64)
        if isinstance(tkey, list) and not tkey
        else np.asarray(tkey)
    )
    if arr.dtype == bool:
        if arr.shape != (T,):
            raise IndexError(
                f"boolean index did not match indexed array along axis 0; size of axis is {T} "
                f"but size of corresponding boolean axis is {arr.shape[0] if arr.ndim else 0}"
            )
        return np.flatnonzero(arr).astype(np.int64), slice(None)
    if arr.dtype.kind not in "iu":
        raise IndexError(
            "only integers, slices (`:`), ellipsis (`...`), and integer or boolean arrays are "
            f"valid indices (got dtype {arr.dtype})"
        )
    arr = arr.astype(np.int64)
    bad = arr[(arr < -T) | (arr >= T)]
    if bad.size:
        raise IndexError(f"index {int(bad[0])} is out of bounds for axis 0 with size {T}")
    arr = np.where(arr < 0, arr + T, arr)
    uniq, inv = np.unique(arr, return_inverse=True)
    return uniq, inv.reshape(arr.shape)


# ---------------------------------------------------------------------------------------------
# Public constructors
# ---------------------------------------------------------------------------------------------


def _default_dtype(*arrays: Any) -> np.dtype:
    dts = [np.dtype(a.dtype) for a in arrays if a is not None]
    return np.result_type(np.float32, *dts)


def rcm(
    model: CNMFModel,
    components: Components = "all",
    *,
    traces: Any = "C",
    dtype: Any = None,
    frame_chunk: int | None = None,
) -> RCM:
    """The reconstructed movie ``A[:, idx] · traces[idx]``, lazily, ``(T, *dims)``.

    Parameters
    ----------
    model
        A :class:`CNMFModel`.
    components
        ``"all"``, ``"good"``, ``"bad"``, int indices, a slice or a boolean mask.
    traces
        ``"C"`` (default), ``"F_dff"``, ``"S"``, ``"YrA"``, or any ``(K, T)`` array (NumPy or
        dask) used in place of ``C``.
    dtype
        Output dtype; default float64 when ``A`` or the traces are float64, else float32.
    frame_chunk
        Frames per chunk of ``.data`` (default: the movie's chunks, else about 64 MiB).

    Returns
    -------
    RCM
        Index it (``rcm[t]``, ``rcm[10:50, 5:20]``) for NumPy frames, or use ``.data``.

    Warns
    -----
    EmptyComponentsWarning
        The selection is empty; the movie is exactly zero.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(32, 40), T=50, K=6, seed=0)
    >>> movie = cd.rcm(m, "good")
    >>> movie[3].shape
    (32, 40)
    """
    idx = model.components(components)
    if isinstance(traces, str):
        if traces not in TRACE_NAMES:
            raise OptionError(
                f"traces={traces!r} is not one of {TRACE_NAMES}; or pass a (K, T) array"
            )
        tr = getattr(model, traces)
        if tr is None:
            raise ComponentError(f"traces={traces!r}: this model has no {traces}")
        name = traces
    else:
        tr = (
            traces if isinstance(traces, da.Array) else da.from_array(np.asarray(traces), chunks=-1)
        )
        if tuple(tr.shape) != (model.K, model.T):
            raise ShapeMismatchError(
                f"traces have shape {tuple(tr.shape)} but the model has K={model.K} components "
                f"and T={model.T} frames: pass a (K, T) array (rows for all components; the "
                "selection picks rows)."
            )
        name = tr.name
    if idx.size == 0:
        warnings.warn(
            f"component selection {components!r} is empty: the reconstructed movie is exactly "
            "zero everywhere.",
            EmptyComponentsWarning,
            stacklevel=2,
        )
    dt = np.dtype(dtype) if dtype is not None else _default_dtype(model.A, tr)
    return RCM(model, idx, tr, name, dtype=dt, frame_chunk=frame_chunk)


def rcb(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> Movie:
    """The reconstructed background, lazily, ``(T, *dims)``.

    Low rank: ``b · f``. (CNMF-E's ring model ``b0 + W·(Y − A·C − b0)`` needs the movie.)

    Raises
    ------
    ComponentError
        The model has no background (neither ``b``/``f`` nor ``W``/``b0``).
    """
    kind = model.background
    if kind == "lowrank":
        dt = np.dtype(dtype) if dtype is not None else _default_dtype(model.b, model.f)
        return RCB(model, dtype=dt, frame_chunk=frame_chunk)
    if kind == "ring":
        from ._ring_movie import ring_rcb

        return ring_rcb(model, dtype=dtype, frame_chunk=frame_chunk)
    raise ComponentError(
        "this model has no background: neither b and f (low rank) nor W and b0 (CNMF-E ring). "
        "Build it with cd.from_arrays(..., b=..., f=...)."
    )


def raw(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> Raw:
    """The movie ``Y`` as a lazy movie (same indexing, ``.data``, projections as the others).

    ``dtype`` defaults to the movie's own floating dtype (float32 for CaImAn memmaps).

    Raises
    ------
    ComponentError
        The model has no movie ``Y``.
    """
    if model.Y is None:
        raise ComponentError(
            "this model has no movie Y: pass movie='...mmap' to cd.open_cnmf (or Y= to "
            "cd.from_arrays)."
        )
    dt = np.dtype(dtype) if dtype is not None else _default_dtype(model.Y)
    return Raw(model, dtype=dt, frame_chunk=frame_chunk)


def residuals(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> Movie:
    """The residual movie ``Y − A·C − B``, lazily, ``(T, *dims)``.

    Raises
    ------
    ComponentError
        The model has no movie ``Y`` (pass ``movie=`` to :func:`open_cnmf`).
    """
    if model.Y is None:
        raise ComponentError(
            "residuals need the movie Y, which this model does not have: pass "
            "movie='...mmap' to cd.open_cnmf (or Y= to cd.from_arrays)."
        )
    if model.background == "ring":
        from ._ring_movie import ring_residuals

        return ring_residuals(model, dtype=dtype, frame_chunk=frame_chunk)
    dt = (
        np.dtype(dtype) if dtype is not None else _default_dtype(model.A, model.C, model.b, model.f)
    )
    return Residuals(model, dtype=dt, frame_chunk=frame_chunk)
