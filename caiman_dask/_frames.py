"""Frames of a described movie, computed from the factors (index pushdown, no dask).

:class:`Frames` holds a movie's operators in memory — the footprints of its factored part in
C pixel order, scaled by their weights (per spatial crop, an LRU of 8), the traces, the
background, the ring operator — and computes ``movie[times, crop]`` with the frame kernels
(:mod:`caiman_dask._frame_kernels`). :func:`evaluate` is the arithmetic of one block of frames;
the dask blocks (:mod:`caiman_dask._graph`) call it too, so frames and ``.data`` agree bit for
bit.

Operators follow the frame kernel's convention: with the movie ``Y`` it computes
``Y − (b·f + A·C)``, so a movie ``Y + Σ factors`` (residuals, ``raw − rcb``...) hands it its
factored part negated (:func:`kernel_sign`).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

import numpy as np
import scipy.sparse

from . import _buffers
from ._description import Description
from ._frame_kernels import (
    c_to_f_permutation,
    frame_rows,
    frames,
    fused,
    gather_pixel_major,
    n_bands,
    pixel_major,
    residual_bands,
)
from ._index import Crop, full_crop, time_key
from ._io import sparse_to_scipy
from ._ring import (
    RingBlock,
    RingOperator,
    prepare_ring,
    ring_block,
    ring_combine,
    ring_x,
    ring_z_into,
)
from .errors import NaNWarning

__all__ = [
    "Frames",
    "Plan",
    "evaluate",
    "kernel_sign",
    "prepare_background",
    "prepare_footprints",
    "warn_nonfinite",
    "weighted_columns",
]

#: Frames computed per inner step of a large slice (bounds temporaries, keeps cache-friendly).
FRAME_BLOCK = 32
#: Requests of at least this many output pixels are split across threads (the kernels release
#: the GIL); smaller ones run inline, where a thread hand-off would cost more than it saves.
PARALLEL_PIXELS = 4_000_000
#: Frames of at least this many bands (``_frame_kernels._BAND`` pixels) are shared by the cores
#: when a request has fewer frames than cores: each core takes a share of the bands.
PARALLEL_BANDS = 4
#: A ring background whose sparse product ``W·X`` has at least this many multiply-adds shares
#: it between the cores when a request has fewer frames than cores (``rcb[t]``, ``res[t]``).
PARALLEL_NNZ = 500_000
#: The share of ``X``'s rows core 0 computes in ``res[t]`` of a ring model (core 1 computes
#: ``Y − A·C`` and the rest: both are done at about the same time).
RES_X_SHARE = 0.75
CORES = os.cpu_count() or 1
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=CORES, thread_name_prefix="caiman-dask-frames")
    return _POOL


def _shares(n: int, parts: int) -> list[int]:
    """Edges of ``parts`` near-equal shares of ``range(n)``."""
    return [k * n // parts for k in range(parts + 1)]


def _in_parallel(run: Callable[[Any], object], parts: Sequence[Any]) -> None:
    """``run(part)`` for every part: the first on this thread, the others on the pool."""
    futures = [_pool().submit(run, p) for p in parts[1:]]
    run(parts[0])
    for fut in futures:
        fut.result()


# ---------------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------------

#: Requests of at most this many frames of a movie with ``Y`` have their output scanned for
#: non-finite values (interactive frames, where the scan costs ~5 %); larger slices, ``.data``
#: and exports leave that to the statistics (``cd.project``, ``movie.min``, ``cd.to_zarr``).
SCAN_FRAMES = 8


def warn_nonfinite(what: str, arr: np.ndarray | None) -> None:
    """One :class:`~caiman_dask.NaNWarning` with counts when ``arr`` holds NaN or inf."""
    if arr is None or arr.dtype.kind != "f" or bool(np.isfinite(arr).all()):
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(arr.size - n_nan - np.isfinite(arr).sum())
    warnings.warn(
        f"{what} hold {n_nan} NaN and {n_inf} inf value(s) of {arr.size}; frames and images of "
        "the pixels they touch are NaN / inf. Look for them in the movie Y or the factors "
        "(np.isfinite).",
        NaNWarning,
        stacklevel=4,
    )


# ---------------------------------------------------------------------------------------------
# The arithmetic of a block of frames
# ---------------------------------------------------------------------------------------------


def kernel_sign(desc: Description) -> float:
    """The factor the factored part's operators are built with: -1 when the frame kernel
    subtracts them from ``Y`` (``y == 1``, no ring background), else +1."""
    return -1.0 if desc.y == 1.0 and desc.ring == 0.0 else 1.0


@dataclass(frozen=True)
class Plan:
    """The static part of :func:`evaluate` (small, picklable: it travels in dask tasks)."""

    dims: tuple[int, ...]
    dtype: np.dtype
    y: float
    ring: float
    reuse: float | None  # c when the factored part is c·A·C (see Description.uniform_rcm)

    @classmethod
    def of(cls, desc: Description, dtype: np.dtype) -> Plan:
        reuse = desc.uniform_rcm() if desc.ring else None
        return cls(desc.model.dims, np.dtype(dtype), desc.y, desc.ring, reuse)


@dataclass(frozen=True)
class RingOperands:
    """What the ring background of a block needs besides ``Y``: the ring operator and ``A·C``
    of all components (footprints in C order, traces ``(n, K)``)."""

    op: RingOperator
    A: scipy.sparse.csc_matrix
    Ct: np.ndarray


def evaluate(
    out: np.ndarray,
    plan: Plan,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None,
    ft: np.ndarray | None,
    Y: np.ndarray | None,
    ring: RingOperands | None = None,
    split: bool = False,
) -> None:
    """Frames ``out`` ``(n, npix)`` (C order, ``plan.dtype``) of ``y·Y + ring·B + A·C + b·f``.

    ``A`` / ``b`` carry the weights and :func:`kernel_sign`; ``Y``: the block's movie frames
    ``(n, *crop)`` in any layout (``None`` when ``plan.y == plan.ring == 0``). With a ring
    background the frames are whole (``npix = P``); ``split``: its sparse product is shared by
    the cores (only from a thread outside the frame pool: few frames asked interactively).
    """
    n = out.shape[0]
    if plan.ring:
        assert ring is not None and Y is not None
        _ring_evaluate(out, plan, A, Ct, b, ft, Y, ring, split)
    elif plan.y == 0.0 or Y is None:
        frames(out, A, Ct, b, ft)
    elif plan.y == 1.0:
        frames(out, A, Ct, b, ft, Y)  # Y − (−factored): the operators carry the sign
    else:
        frames(out, A, Ct, b, ft)
        out += plan.y * np.asarray(Y, dtype=plan.dtype).reshape(n, -1)


def _ring_evaluate(
    out: np.ndarray,
    plan: Plan,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None,
    ft: np.ndarray | None,
    Y: np.ndarray,
    ring: RingOperands,
    split: bool,
    given: RingBlock | None = None,
) -> None:
    """:func:`evaluate` with the ring background ``B = b0 + U(W·(D·Y − (D·A)·C − D·b0))``
    (full frames); ``given``: the block's ``X`` and ``Z``, computed once for several movies
    (:func:`ring_block`).

    The background ``b0 + U(Z)`` is written straight into ``out``; residuals ``Y − A·C − B``
    are ``Y − A·C`` (the frame kernel) with ``B`` subtracted in place, rounded as
    ``(Y − A·C) − B``. Other sums are assembled from ``B``, ``A·C`` and ``Y``. ``split``:
    share the sparse product's rows between the cores (a request of few frames, made from a
    thread that is not one of the pool's).
    """
    n, dt, dims = out.shape[0], plan.dtype, plan.dims
    P = math.prod(dims)
    op = ring.op
    parts = CORES if split and CORES > 1 and op.W.nnz * n >= PARALLEL_NNZ else 1
    if given is not None:
        parts = 1
        rows, fortran, L, X, Z = given.rows, given.fortran, given.L, given.X, given.Z
    else:
        if parts > 1 and pixel_major(Y, P):  # a CaImAn order-C memmap: the cores gather it
            z = np.empty((n, Y.shape[2], Y.shape[1]), Y.dtype)
            pixels = [range(a, b) for a, b in pairwise(_shares(P, parts))]
            _in_parallel(lambda part: gather_pixel_major(z, Y, part), pixels)
            Y = z.transpose(0, 2, 1)
        rows, fortran = frame_rows(Y)
        L = op.layout(fortran)
        X = np.empty((L.n_pixels_ds, n), dt)
        Z = np.empty_like(X)

    def shares(size: int) -> list[range]:
        return [range(a, b) for a, b in pairwise(_shares(size, parts))]

    def shared(run: Callable[[range], object], size: int) -> None:
        """``run`` over ``parts`` shares of ``range(size)`` (the first on this thread)."""
        _in_parallel(run, shares(size))

    def z_and_combine(r: range, subtract: bool) -> None:
        """``Z`` on the C grid's rows ``r`` (``W``'s rows are in C order), then the frames'
        pixels they cover: a share needs no other share's ``Z``."""
        w = op.dims_ds[-1]
        ring_z_into(L, X, Z, range(r.start * w, r.stop * w))
        ring_combine(op, L, out, Z, subtract, r)

    # Y as it was read (or gathered): the frame kernel takes either pixel order
    Yv = rows.reshape((n, *dims[::-1])).transpose(0, *range(len(dims), 0, -1)) if fortran else Y
    factored = plan.reuse is not None or A.shape[1] or (b is not None and b.shape[1])
    residuals = plan.y == 1.0 and plan.reuse == -1.0 and plan.ring == -1.0
    n_rows_c = len(L.c_rows[0]) - 1
    if residuals and parts > 1 and fused(Yv, P):
        # one core computes X while another computes Y − A·C; each then takes its share of
        # Z = W·X (once X is complete) and subtracts the background from its rows of the
        # frames (once Y − A·C is complete): two hand-offs, no barrier between the steps
        # core 1 computes Y − A·C and the last rows of X while core 0 computes the others (X
        # takes longer); once both are done, each core takes its share of W·X and of the frame
        done = [threading.Event() for _ in range(parts)]
        x_cut = round(L.n_rows_ds * RES_X_SHARE)
        parts_c = shares(n_rows_c)
        w = op.dims_ds[-1]

        def run(i: int) -> None:
            try:
                if i == 0:
                    ring_x(L, rows, ring.Ct, dt, X, range(x_cut))
                elif i == 1:
                    residual_bands(out, ring.A, ring.Ct, None, None, Yv, range(n_bands(P)))
                    ring_x(L, rows, ring.Ct, dt, X, range(x_cut, L.n_rows_ds))
            finally:  # (set even on failure: the other cores never wait for ever)
                done[i].set()
            for e in done[:2]:
                e.wait()
            r = parts_c[i]
            ring_z_into(L, X, Z, range(r.start * w, r.stop * w))
            ring_combine(op, L, out, Z, True, r)

        _in_parallel(run, range(parts))
        return
    if given is None:
        shared(lambda r: ring_x(L, rows, ring.Ct, dt, X, r), L.n_rows_ds)
    if plan.y == 0.0 and not factored:  # the background (times a number)
        if given is None:
            shared(lambda r: z_and_combine(r, False), n_rows_c)
        else:
            ring_combine(op, L, out, Z, False)
        if plan.ring != 1.0:
            out *= dt.type(plan.ring)
        return
    if given is None:
        shared(lambda r: ring_z_into(L, X, Z, r), L.n_pixels_ds)
    if residuals:
        frames(out, ring.A, ring.Ct, None, None, Yv)
        shared(lambda r: ring_combine(op, L, out, Z, True, r), n_rows_c)
        return
    B = np.empty((n, P), dt)
    ring_combine(op, L, B, Z, False)
    acc: np.ndarray | None = None
    if plan.y:
        acc = np.asarray(Yv, dtype=dt).reshape(n, P)
        acc = acc * dt.type(plan.y) if plan.y != 1.0 else acc
    if plan.reuse is not None:  # the factored part is c·A·C
        ac = np.empty((n, P), dt)
        frames(ac, ring.A, ring.Ct)
        if acc is not None and plan.reuse == -1.0:
            acc = np.subtract(acc, ac)
        else:
            term = ac if plan.reuse == 1.0 else ac * dt.type(plan.reuse)
            acc = term if acc is None else acc + term
    elif factored:
        F = np.empty((n, P), dt)
        frames(F, A, Ct, b, ft)
        acc = F if acc is None else acc + F
    if plan.ring == -1.0 and acc is not None:
        res = np.subtract(acc, B)
    else:
        term = B if plan.ring == 1.0 else B * dt.type(plan.ring)
        res = term if acc is None else acc + term
    out[...] = res


def evaluate_ring_movies(
    outs: Sequence[np.ndarray], plans: Sequence[Plan], Y: np.ndarray, ring: RingOperands
) -> None:
    """Frames of several movies ``cy·Y + ca·A·C + cr·B`` of one ring model (their factored
    part empty or ``c·A·C``) into ``outs``, the block's background computed once; each
    movie's frames are bitwise those :func:`evaluate` gives it alone."""
    dt = plans[0].dtype
    given = ring_block(ring.op, Y, ring.Ct, dt)
    n = Y.shape[0]
    A = scipy.sparse.csc_matrix((math.prod(plans[0].dims), 0), dtype=dt)
    none = np.zeros((n, 0), dt)
    for out, plan in zip(outs, plans, strict=True):
        _ring_evaluate(out, plan, A, none, None, None, Y, ring, False, given)


# ---------------------------------------------------------------------------------------------
# Operators (shared with the dask blocks)
# ---------------------------------------------------------------------------------------------


def weighted_columns(
    A: scipy.sparse.spmatrix, columns: np.ndarray, weights: np.ndarray, dtype: np.dtype
) -> scipy.sparse.csc_matrix:
    """CSC ``A[:, columns] · diag(weights)`` in ``dtype`` (weights of 1: ``A``'s values as
    they are)."""
    if A.shape[1] == 0 or len(columns) == 0:
        return scipy.sparse.csc_matrix((A.shape[0], len(columns)), dtype=dtype)
    M = scipy.sparse.csr_matrix(A)[:, columns]
    if not np.all(weights == 1.0):
        M = M @ scipy.sparse.diags(np.asarray(weights, dtype=np.float64))
    return scipy.sparse.csc_matrix(M, dtype=dtype)


def prepare_footprints(
    A: scipy.sparse.spmatrix,
    columns: np.ndarray,
    weights: np.ndarray,
    dims: tuple[int, ...],
    dtype: np.dtype,
    order: str = "C",
) -> scipy.sparse.csc_matrix:
    """:func:`weighted_columns` of CaImAn's footprints (rows in Fortran order) with rows in C
    pixel order (or left in F order)."""
    A = scipy.sparse.csr_matrix(A)
    if order == "C" and A.shape[1]:
        A = A[c_to_f_permutation(dims)]
    return weighted_columns(A, columns, weights, dtype)


def prepare_background(
    b: np.ndarray, weights: np.ndarray, dims: tuple[int, ...], dtype: np.dtype, order: str = "C"
) -> np.ndarray:
    """``b · diag(weights)`` with rows in C pixel order (or F order, as stored), in ``dtype``."""
    b = np.asarray(b)
    if order == "C":
        b = b[c_to_f_permutation(dims)]
    if not np.all(weights == 1.0):
        b = b * np.asarray(weights, dtype=np.float64)
    return np.ascontiguousarray(b, dtype=dtype)


def blocks_to_scipy(blocks: Sequence[Any]) -> scipy.sparse.csc_matrix:
    """One sparse matrix from the column blocks of a sparse dask array."""
    return scipy.sparse.hstack([sparse_to_scipy(b) for b in blocks]).tocsc()


# ---------------------------------------------------------------------------------------------
# Frames in memory
# ---------------------------------------------------------------------------------------------


def _frames_label(times: np.ndarray) -> str:
    return ", ".join(str(int(t)) for t in times[:4]) + (", ..." if len(times) > 4 else "")


class Frames:
    """Frames of a described movie from in-memory factors (see the module docstring).

    Operators are prepared on first use and kept (footprints per crop: an LRU of 8). Threads
    may share one object.
    """

    def __init__(self, desc: Description, dtype: np.dtype) -> None:
        self.desc = desc
        self.dtype = np.dtype(dtype)
        self.plan = Plan.of(desc, self.dtype)
        self._sign = kernel_sign(desc)
        self._ops: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ operators
    def _op(self, key: Any, build: Callable[[], Any]) -> Any:
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

    @cached_property
    def _traces(self) -> list[np.ndarray]:
        """Each footprint factor's traces (selected rows), in memory, as stored."""
        return [self.desc.host_traces(f)[f.columns] for f in self.desc.kernel_footprints]

    @cached_property
    def Ct(self) -> np.ndarray:
        """Traces of the factored part ``(T, K_sel)``, C-contiguous, in the movie's dtype."""
        parts = self._traces
        if not parts:
            return np.zeros((self.desc.model.T, 0), self.dtype)
        return np.ascontiguousarray(np.concatenate(parts, axis=0).T, dtype=self.dtype)

    @cached_property
    def ft(self) -> np.ndarray | None:
        """Background traces ``(T, nb)`` in the movie's dtype (``None``: no ``b·f`` term)."""
        f = self.desc.background
        if f is None:
            return None
        return np.ascontiguousarray(self.desc.host_traces(f)[f.columns].T, dtype=self.dtype)

    def footprints(self, crop: Crop) -> scipy.sparse.csc_matrix:
        """The factored part's footprints on ``crop``, C order, weighted, signed, in dtype."""

        def build() -> scipy.sparse.csc_matrix:
            host = self.desc.model._host.A  # CSR, C order
            A = host if crop.pix is None else host[crop.pix]
            cols, w = self.desc.kernel_columns()
            return weighted_columns(A, cols, w * self._sign, self.dtype)

        return self._op(("A", crop.key), build)

    def background(self, crop: Crop) -> np.ndarray | None:
        """The factored part's ``b · diag(w)`` on ``crop``, C order, signed, in dtype."""
        f = self.desc.background
        if f is None:
            return None

        def build() -> np.ndarray:
            b = self.desc.model._host.b
            assert b is not None
            b = (b if crop.pix is None else b[crop.pix])[:, f.columns]
            w = f.weights[f.columns] * self._sign
            return np.ascontiguousarray(b * w if not np.all(w == 1.0) else b, dtype=self.dtype)

        return self._op(("b", crop.key), build)

    @cached_property
    def ring(self) -> RingOperands:
        """The ring operator and ``A·C`` of all components (C order, in the movie's dtype)."""
        m = self.desc.model
        h = m._host
        assert h.W is not None and h.b0 is not None
        A = scipy.sparse.csc_matrix(h.A, dtype=self.dtype)  # (as the dask blocks take it)
        return RingOperands(
            prepare_ring(h.W, h.b0, m.dims, dtype=self.dtype, A=A),
            A,
            np.ascontiguousarray(h.C.T, dtype=self.dtype),
        )

    # ------------------------------------------------------------------ frames
    def _read_y(self, times: np.ndarray, crop: Crop) -> np.ndarray:
        src = self.desc.model.movie_source
        assert src is not None
        return src.read((time_key(times), *crop.sel))

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: Crop, split: bool = False) -> None:
        """Frames ``times`` of ``crop`` into ``out`` ``(n, npix)`` (``split``: see
        :func:`evaluate`)."""
        d = self.desc
        if d.ring:  # the ring needs whole frames: computed whole, then cropped
            dims = d.model.dims
            n = len(times)
            full = out if crop.pix is None else np.empty((n, math.prod(dims)), self.dtype)
            r = self.ring
            whole = full_crop(dims)
            ring = RingOperands(r.op, r.A, r.Ct[times])
            A, Ct, b, ft = self._operands(times, whole)
            evaluate(full, self.plan, A, Ct, b, ft, self._read_y(times, whole), ring, split)
            if crop.pix is not None:
                np.take(full, crop.pix, axis=1, out=out)
            return
        A, Ct, b, ft = self._operands(times, crop)
        evaluate(out, self.plan, A, Ct, b, ft, self._read_y(times, crop) if d.y else None)

    def _operands(
        self, times: np.ndarray, crop: Crop
    ) -> tuple[scipy.sparse.csc_matrix, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``A, Ct, b, ft`` of :func:`evaluate` for frames ``times`` of ``crop``."""
        A, Ct = self.footprints(crop), self.Ct[times]
        ft = self.ft
        if ft is None:
            return A, Ct, None, None
        return A, Ct, self.background(crop), ft[times]

    def get(self, times: np.ndarray, crop: Crop) -> np.ndarray:
        """Frames ``times`` restricted to ``crop`` as ``(n, *crop.shape)`` in the dtype.

        Large requests are split across the cores; a request of fewer frames than cores on a
        movie ``Y + factored`` shares each frame's pixel bands between them.
        """
        n, npix = len(times), crop.npix
        out = None
        if self.plan.y == 1.0 and not self.plan.ring:
            few = CORES > 1 and 0 < n < CORES and n_bands(npix) >= PARALLEL_BANDS
            if few and len(crop.shape) == 2:
                out = self._shared_frames(times, crop)
        if out is None:
            out = self._computed(times, crop)
        if self.desc.streaming and n <= SCAN_FRAMES:
            warn_nonfinite(f"frames {_frames_label(times)}", out)
        return out.reshape((n, *crop.shape))

    def _computed(self, times: np.ndarray, crop: Crop) -> np.ndarray:
        """Frames ``(n, npix)`` block by block, split across the cores when large."""
        n, npix = len(times), crop.npix
        out = _buffers.empty((n, npix), self.dtype)  # ≥ 1 MiB: recycled, already mapped

        def run(part: slice, split: bool = False) -> None:
            for s in range(part.start, part.stop, FRAME_BLOCK):
                sl = slice(s, min(part.stop, s + FRAME_BLOCK))
                self._fill(out[sl], times[sl], crop, split)

        if CORES == 1 or n < 2 or n * npix < PARALLEL_PIXELS:
            run(slice(0, n), split=n < CORES)  # (few frames: the cores share each one)
        else:  # equal shares, one per core (blocks of 32 would leave one core idle at the end)
            _in_parallel(run, [slice(a, b) for a, b in pairwise(_shares(n, min(CORES, n)))])
        return out

    def _shared_frames(self, times: np.ndarray, crop: Crop) -> np.ndarray | None:
        """``res[t]``, ``raw[t]``: the cores share each frame, band by band (a pixel-major
        movie's frames are first gathered, pixels split between them); ``None`` when the
        movie's frames are strided in another way (the plain path takes them)."""
        n, npix = len(times), crop.npix
        y = self._read_y(times, crop)
        if pixel_major(y, npix):  # a CaImAn order-C memmap: gathered by both cores first
            h, w = y.shape[1:]
            z = _buffers.empty((n, w, h), y.dtype)
            pixels = [range(a, b) for a, b in pairwise(_shares(npix, CORES))]
            _in_parallel(lambda part: gather_pixel_major(z, y, part), pixels)
            y = z.transpose(0, 2, 1)
        if not fused(y, npix):  # other strided frames (views of the file)
            return None
        out = _buffers.empty((n, npix), self.dtype)
        A, Ct, bg, ft = self._operands(times, crop)
        bands = [range(p, q) for p, q in pairwise(_shares(n_bands(npix), CORES))]
        _in_parallel(lambda part: residual_bands(out, A, Ct, bg, ft, y, part), bands)
        return out
