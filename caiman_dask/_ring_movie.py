"""CNMF-E ring-model background and residual movies (lazy, index pushdown, dask graphs).

A frame of the ring background ``B_t = b0 + U(W·(D·Y_t − D·A·C_t − D·b0))`` needs only ``Y[t]``
and ``C[:, t]``: ``movie[t]`` reads one frame of the movie and one column of ``C``.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._kernels import frames
from ._model import CNMFModel
from ._movies import (
    Movie,
    _blockwise_frames,
    _Cropped,
    _default_dtype,
    _op_array,
    _single,
    _time_key,
)
from ._ring import RingOperator, prepare_ring, ring_frames

__all__ = ["RingMovie", "ring_rcb", "ring_residuals"]


def _prepare_ring_blocks(blocks: list[Any], dims: tuple[int, ...], dtype: np.dtype) -> RingOperator:
    from ._io import sparse_to_scipy

    w_blocks, b0_blocks = blocks
    import scipy.sparse

    W = scipy.sparse.hstack([sparse_to_scipy(b) for b in w_blocks])
    b0 = np.concatenate([np.asarray(b) for b in b0_blocks])
    return prepare_ring(W, b0, dims, dtype=dtype)


def _ring_block(
    y: Any,
    opA: Any,
    c: Any,
    ring: Any,
    *,
    part: str,
    dims: tuple[int, ...],
    out_dtype: np.dtype,
) -> np.ndarray:
    y = _single(y)
    c = np.asarray(_single(c))
    n = y.shape[0]
    ac = np.empty((n, math.prod(dims)), out_dtype)
    frames(ac, _single(opA), c.T)
    ac = ac.reshape((n, *dims))
    B = ring_frames(_single(ring), y, ac)
    if part == "rcb":
        return B.astype(out_dtype, copy=False)
    return np.subtract(np.subtract(y, ac, dtype=out_dtype), B, dtype=out_dtype)


class RingMovie(Movie):
    """CNMF-E ring background (``part="rcb"``) or its residuals (``part="residuals"``)."""

    def __init__(
        self,
        model: CNMFModel,
        part: Literal["rcb", "residuals"],
        *,
        dtype: Any,
        frame_chunk: int | None,
    ) -> None:
        super().__init__(model, dtype=dtype, frame_chunk=frame_chunk)
        from ._movies import RCM

        self.part = part
        self.kind = part
        self._rcm = RCM(
            model, model.components("all"), model.C, "C", dtype=dtype, frame_chunk=frame_chunk
        )

    @cached_property
    def ring(self) -> RingOperator:
        """The ring operator in C pixel order (built once, in the movie's dtype)."""
        h = self.model._host
        assert h.W is not None and h.b0 is not None
        return prepare_ring(h.W, h.b0, self.model.dims, dtype=self._dtype)

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: _Cropped) -> None:
        src = self.model.movie_source
        assert src is not None
        n = len(times)
        dims = self.model.dims
        y = src.read((_time_key(times),))
        full = _Cropped(None, dims, (False,) * len(dims))
        ac = np.empty((n, math.prod(dims)), self._dtype)
        self._rcm._fill(ac, times, full)
        ac = ac.reshape((n, *dims))
        B = ring_frames(self.ring, y, ac)
        if self.part == "residuals":
            B = np.subtract(np.subtract(y, ac, dtype=self._dtype), B, dtype=self._dtype)
        B = B.reshape(n, -1)
        if crop.pix is None:
            out[...] = B
        else:
            np.take(B, crop.pix, axis=1, out=out)

    def _build_dask(self) -> da.Array:
        m = self.model
        assert m.W is not None and m.b0 is not None
        tok = tokenize(m.token, self._dtype, self.time_chunks, self.part)
        ring = _op_array(
            f"ring-op-{tokenize(m.W.name, m.b0.name, m.dims, self._dtype)}",
            _prepare_ring_blocks,
            [m.W, m.b0],
            m.dims,
            self._dtype,
        )
        return _blockwise_frames(
            f"ring-{self.part}-{tok}",
            _ring_block,
            m.dims,
            self._dtype,
            self._y_blocks(),
            self._rcm.footprint_op(),
            self._rcm.trace_blocks(),
            (ring, "w"),
            part=self.part,
        )


def _ring_dtype(model: CNMFModel, dtype: Any) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    return _default_dtype(model.A, model.C, model.W, model.b0)


def ring_rcb(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> RingMovie:
    """The CNMF-E ring background as a lazy movie (needs the movie ``Y``)."""
    if model.Y is None:
        from .errors import ComponentError

        raise ComponentError(
            "the CNMF-E ring background b0 + W·(Y − A·C − b0) needs the movie Y, which this "
            "model does not have: pass movie='...mmap' to cd.open_cnmf (or Y= to cd.from_arrays)."
        )
    return RingMovie(model, "rcb", dtype=_ring_dtype(model, dtype), frame_chunk=frame_chunk)


def ring_residuals(
    model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None
) -> RingMovie:
    """Residuals ``Y − A·C − B`` with the CNMF-E ring background, as a lazy movie."""
    return RingMovie(model, "residuals", dtype=_ring_dtype(model, dtype), frame_chunk=frame_chunk)
