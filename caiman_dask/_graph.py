"""Dask graphs of a described movie: one ``blockwise`` layer over time chunks.

The factors reach the tasks as dask arrays (read per chunk from their file); operators derived
from them — the footprints permuted to C pixel order and weighted, the background, the ring
operator — are one-block arrays built once per computation from the factors' own tasks
(:func:`op_array`). Every block is computed by :func:`caiman_dask._frames.evaluate`, the
arithmetic of the in-memory frames, so ``movie.data`` and ``movie[t]`` agree bit for bit.
Names are deterministic: they depend on the description's token, the dtype and the chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import dask.array as da
import numpy as np
import scipy.sparse
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ._description import Description
from ._frames import (
    Plan,
    RingOperands,
    blocks_to_scipy,
    evaluate,
    evaluate_ring_movies,
    kernel_sign,
    prepare_background,
    prepare_footprints,
    warn_nonfinite,
)
from ._ring import prepare_ring

__all__ = [
    "background_op",
    "f_blocks",
    "footprint_op",
    "movie_graph",
    "op_array",
    "ring_movies_graph",
    "ring_op",
    "single",
    "trace_blocks",
    "y_blocks",
]

#: Blockwise index letters of the trace arrays (one per footprint factor).
_TRACE_LETTERS = "kmnopqrsuv"


def op_array(
    name: str, func: Callable[..., Any], arrays: da.Array | list[da.Array], *args: Any
) -> da.Array:
    """A one-chunk dask array whose block is ``func(blocks, *args)``.

    ``blocks`` is the list of all blocks of ``arrays`` (or, for a list of arrays, a list of
    such lists): operators derived from factors are built once per computation, from the
    factors' own (file-reading) tasks.
    """
    many = isinstance(arrays, list)
    arrs = arrays if isinstance(arrays, list) else [arrays]
    keys: Any = [_flat_keys(a) for a in arrs]
    layer: dict[Any, Any] = {(name, 0): (func, keys if many else keys[0], *args)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=cast(Any, arrs))
    return da.Array(graph, name, chunks=((1,),), dtype=object, meta=np.empty((0,), object))


def _flat_keys(arr: da.Array) -> list[Any]:
    out: list[Any] = []

    def walk(x: Any) -> None:
        if isinstance(x, list):
            for y in x:
                walk(y)
        else:
            out.append(x)

    walk(arr.__dask_keys__())
    return out


def single(x: Any) -> Any:
    """A block handed over by ``blockwise(..., concatenate=False)``: nested lists of blocks
    along contracted axes joined into one array."""
    while isinstance(x, list):
        if len(x) != 1:
            return np.concatenate([single(y) for y in x], axis=0)
        x = x[0]
    return x


# ---------------------------------------------------------------------------------------------
# Pieces of a movie's graph
# ---------------------------------------------------------------------------------------------


def _footprints_from_blocks(
    blocks: list[Any],
    columns: np.ndarray,
    weights: np.ndarray,
    dims: tuple[int, ...],
    dtype: np.dtype,
    order: str,
) -> scipy.sparse.csc_matrix:
    if not blocks:
        return scipy.sparse.csc_matrix((math.prod(dims), len(columns)), dtype=dtype)
    A = blocks_to_scipy(blocks)
    warn_nonfinite("the footprints A", A.data)
    return prepare_footprints(A, columns, weights, dims, dtype, order)


def footprint_op(
    desc: Description, dtype: np.dtype, order: str = "C", sign: float | None = None
) -> da.Array:
    """One-block array: the factored part's footprints as the frame kernels take them
    (:meth:`~._description.Description.kernel_columns`), weighted (times ``sign``, default
    :func:`~._frames.kernel_sign`), rows in C (or F) pixel order."""
    m = desc.model
    cols, w = desc.kernel_columns()
    w = w * (kernel_sign(desc) if sign is None else sign)
    name = f"footprints-{tokenize(m.A.name, cols, w, m.dims, np.dtype(dtype), order)}"
    return op_array(name, _footprints_from_blocks, m.A, cols, w, m.dims, np.dtype(dtype), order)


def trace_blocks(desc: Description, chunks: tuple[int, ...]) -> list[da.Array]:
    """The selected traces of each factor the kernels apply, in time chunks ``chunks`` (one
    block along components)."""
    return [f.traces[f.columns].rechunk({0: -1, 1: chunks}) for f in desc.kernel_footprints]


def _background_from_blocks(
    blocks: list[Any],
    columns: np.ndarray,
    weights: np.ndarray,
    dims: tuple[int, ...],
    dtype: np.dtype,
    order: str,
) -> np.ndarray:
    b = np.concatenate([np.asarray(blk) for blk in blocks], axis=0)[:, columns]
    warn_nonfinite("the background b", b)
    return prepare_background(b, weights, dims, dtype, order)


def background_op(
    desc: Description, dtype: np.dtype, order: str = "C", sign: float | None = None
) -> da.Array | None:
    """One-block array: ``b · diag(w)`` of the factored part (times ``sign``), rows in C (or
    F) pixel order; ``None`` without a ``b·f`` term."""
    f = desc.background
    if f is None:
        return None
    m = desc.model
    assert m.b is not None
    w = f.weights[f.columns] * (kernel_sign(desc) if sign is None else sign)
    name = f"background-{tokenize(m.b.name, f.columns, w, m.dims, np.dtype(dtype), order)}"
    return op_array(
        name, _background_from_blocks, m.b, f.columns, w, m.dims, np.dtype(dtype), order
    )


def f_blocks(desc: Description, chunks: tuple[int, ...]) -> da.Array | None:
    """The background traces ``f`` (selected rows) in time chunks ``chunks``."""
    f = desc.background
    return None if f is None else f.traces[f.columns].rechunk({0: -1, 1: chunks})


def y_blocks(desc: Description, chunks: tuple[int, ...]) -> da.Array:
    """The movie ``Y`` in time chunks ``chunks``."""
    y = desc.model.Y
    assert y is not None
    return y if tuple(y.chunks[0]) == tuple(chunks) else y.rechunk({0: chunks})


def _ring_from_blocks(blocks: list[Any], dims: tuple[int, ...], dtype: np.dtype) -> Any:
    w_blocks, b0_blocks, a_blocks = blocks
    W = blocks_to_scipy(w_blocks)
    b0 = np.concatenate([np.asarray(b) for b in b0_blocks])
    warn_nonfinite("the ring weights W", W.data)
    warn_nonfinite("the ring baseline b0", b0)
    P = math.prod(dims)
    Af = blocks_to_scipy(a_blocks) if a_blocks else scipy.sparse.csc_matrix((P, 0))
    K = Af.shape[1]
    A = prepare_footprints(Af, np.arange(K), np.ones(K), dims, dtype)
    return prepare_ring(W, b0, dims, dtype=dtype, A=A), A


def ring_op(desc: Description, dtype: np.dtype) -> da.Array:
    """One-block array: the ring operator (prepared with the footprints) and the footprints
    in C order, in ``dtype``."""
    m = desc.model
    assert m.W is not None and m.b0 is not None
    name = f"ring-op-{tokenize(m.W.name, m.b0.name, m.A.name, m.dims, np.dtype(dtype))}"
    return op_array(name, _ring_from_blocks, [m.W, m.b0, m.A], m.dims, np.dtype(dtype))


# ---------------------------------------------------------------------------------------------
# The movie
# ---------------------------------------------------------------------------------------------


def _movie_block(
    y: Any,
    a_op: Any,
    b_op: Any,
    f: Any,
    ring: Any,
    ring_c: Any,
    *traces: Any,
    plan: Plan,
) -> np.ndarray:
    """One block of frames ``(n, *dims)``: :func:`~._frames.evaluate` on the block's inputs."""
    parts = [np.asarray(single(c)) for c in traces]  # (K_j, n) each
    if y is not None:
        n = single(y).shape[0]
    else:
        n = next(single(x).shape[1] for x in (f, ring_c, *parts) if x is not None)
    dt = plan.dtype
    Ct = np.concatenate(parts, axis=0).T if parts else np.zeros((n, 0), dt)
    ft = None if f is None else np.asarray(single(f)).T
    warn_nonfinite("the traces of this block", Ct)
    warn_nonfinite("the background traces f of this block", ft)
    Y = None if y is None else single(y)
    ring_ops = None
    if ring is not None:
        op, A_all = single(ring)
        ring_ops = RingOperands(op, A_all, np.ascontiguousarray(np.asarray(single(ring_c)).T, dt))
    out = np.empty((n, math.prod(plan.dims)), dt)
    evaluate(out, plan, single(a_op), Ct, None if b_op is None else single(b_op), ft, Y, ring_ops)
    if Y is not None and not np.isfinite(np.add.reduce(out, axis=None)):
        # (one sum of the block, ~5 % of its work: NaN and inf propagate into it; only then
        # are the values counted)
        warn_nonfinite("the frames of this block", out)
    return out.reshape((n, *plan.dims))


def _ring_movies_block(y: Any, ring: Any, ring_c: Any, *, plans: list[Plan]) -> np.ndarray:
    """One block ``(k, n, *dims)`` of several ring movies: :func:`~._frames.evaluate_ring_movies`
    (the block's background computed once)."""
    Y = single(y)
    n = Y.shape[0]
    dt = plans[0].dtype
    op, A_all = single(ring)
    ring_ops = RingOperands(op, A_all, np.ascontiguousarray(np.asarray(single(ring_c)).T, dt))
    P = math.prod(plans[0].dims)
    out = np.empty((len(plans), n, P), dt)
    evaluate_ring_movies(list(out), plans, Y, ring_ops)
    return out.reshape((len(plans), n, *plans[0].dims))


def ring_movies_graph(
    descs: list[Description], dtype: np.dtype, chunks: tuple[int, ...], label: str = "ring-movies"
) -> da.Array:
    """Several movies ``cy·Y + ca·A·C + cr·B`` of one ring model (the factored part empty or
    ``c·A·C``: :meth:`~._description.Description.uniform_rcm`) stacked ``(k, T, *dims)`` in
    time chunks ``chunks``: each block computes its background once for all of them, and
    ``stack[j]`` has bitwise the blocks of ``movie_graph(descs[j], ...)``."""
    desc = descs[0]
    m = desc.model
    dt = np.dtype(dtype)
    letters = "ijl"[: len(m.dims)]
    name = f"{label}-{tokenize([d.token for d in descs], dt, tuple(chunks))}"
    return da.blockwise(
        _ring_movies_block,
        "st" + letters,
        y_blocks(desc, chunks),
        "t" + letters,
        ring_op(desc, dt),
        "x",
        m.C.rechunk({0: -1, 1: chunks}),
        "ct",
        new_axes={"s": len(descs), **dict(zip(letters, m.dims, strict=True))},
        concatenate=False,
        dtype=dt,
        meta=np.empty((0,) * (len(m.dims) + 2), dt),
        name=name,
        plans=[Plan.of(d, dt) for d in descs],
    )


def movie_graph(
    desc: Description, dtype: np.dtype, chunks: tuple[int, ...], label: str = "movie"
) -> da.Array:
    """The described movie as a dask array ``(T, *dims)`` in time chunks ``chunks``.

    Building it computes nothing and embeds no factor.
    """
    m = desc.model
    dt = np.dtype(dtype)
    shape = (m.T, *m.dims)
    full = tuple((d,) for d in m.dims)
    if not desc.factors and not desc.streaming:  # (a − a): exactly zero
        return da.zeros(shape, chunks=(chunks, *full), dtype=dt)
    if not desc.factors and desc.ring == 0.0 and desc.y == 1.0:  # Y itself: an exact conversion
        y = y_blocks(desc, chunks)
        return y if y.dtype == dt else y.astype(dt)
    letters = "ijl"[: len(m.dims)]
    out_ind = "t" + letters
    args: list[Any] = [
        *((y_blocks(desc, chunks), out_ind) if desc.streaming else (None, None)),
        footprint_op(desc, dt),
        "z",
    ]
    b = background_op(desc, dt)
    args += [b, None if b is None else "w"]
    f = f_blocks(desc, chunks)
    args += [f, None if f is None else "ft"]
    if desc.ring:
        args += [ring_op(desc, dt), "x", m.C.rechunk({0: -1, 1: chunks}), "ct"]
    else:
        args += [None, None, None, None]
    for letter, tr in zip(_TRACE_LETTERS, trace_blocks(desc, chunks), strict=False):
        args += [tr, letter + "t"]
    name = f"{label}-{tokenize(desc.token, dt, tuple(chunks))}"
    return da.blockwise(
        _movie_block,
        out_ind,
        *args,
        new_axes=dict(zip(letters, m.dims, strict=True)),
        concatenate=False,
        dtype=dt,
        meta=np.empty((0,) * len(shape), dt),
        name=name,
        plan=Plan.of(desc, dt),
    )
