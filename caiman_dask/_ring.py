"""CNMF-E ring-model background, frame by frame, in C pixel order.

CaImAn's ring model (CNMF-E with ``nb=0``) describes the background of frame
``t`` as::

    B_t = b0 + U( W · ( D·Y_t - (D·A)·C_t - D·b0 ) )

where ``b0`` (P,) is a constant baseline, ``W`` (P_ds, P_ds) is a sparse
weight matrix acting on a grid downsampled by ``ssub_B``, ``D`` averages each
``ssub_B x ssub_B`` block of a frame (a block cut short by the frame edge
averages the pixels it has) and ``U`` is the nearest-neighbour upsampling back
to full resolution followed by a crop to ``dims``. By linearity
``D·Y_t - (D·A)·C_t - D·b0 = D·(Y_t - A·C_t) - D·b0``, so one block average of
the difference frame is enough.

CaImAn stores ``b0`` and the rows/columns of ``W`` in Fortran pixel order
(``p = i + d1*j (+ d1*d2*k)``; for ``W`` on the downsampled grid). This
library works in C (row-major) pixel order, so :func:`prepare_ring` permutes
``W`` and ``b0`` once; afterwards every frame computation runs on C-ordered
``(n, *dims)`` arrays without transposes.

3D data: CaImAn's ring-model code (``compute_W`` / ``compute_background``) is
written for 2D frames only. For ``dims = (d1, d2, d3)`` this module uses the
natural extension — the same block averaging over *every* axis, so
``P_ds = prod(ceil(d / ssub_B))`` and ``ssub_B`` is inferred from
``round((P / P_ds) ** (1 / 3))`` — which is a convention of this library, not
something a CaImAn output has been checked against.

Everything here is plain NumPy/SciPy (no dask); the functions are meant to be
called on blocks of frames by the lazy layers of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ._frame_kernels import frame_rows
from ._moment_kernels import MomentsOperator, prepare_moments
from ._ring_kernels import combine, ring_inputs, spmm
from .errors import OptionError, ShapeMismatchError

__all__ = [
    "RingBlock",
    "RingLayout",
    "RingOperator",
    "decimate",
    "downsampled_dims",
    "infer_ssub_B",
    "prepare_ring",
    "ring_background",
    "ring_block",
    "ring_combine",
    "ring_frames",
    "ring_x",
    "ring_z_into",
    "ring_z_own",
    "upsample",
]


# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------


def _as_dims(dims: Any) -> tuple[int, ...]:
    """Validate ``dims`` and return it as a tuple of positive Python ints."""
    out = tuple(int(d) for d in np.asarray(dims).ravel())
    if len(out) not in (2, 3):
        raise ShapeMismatchError(f"dims must have 2 or 3 entries, got {tuple(out)!r}")
    if any(d <= 0 for d in out):
        raise ShapeMismatchError(f"dims must be positive, got {out!r}")
    return out


def downsampled_dims(dims: tuple[int, ...], ssub: int) -> tuple[int, ...]:
    """Shape of the grid obtained by ``ssub``-block averaging of ``dims``.

    Parameters
    ----------
    dims : tuple of int
        Full-resolution frame shape, ``(d1, d2)`` or ``(d1, d2, d3)``.
    ssub : int
        Block size (the same along every axis), ``>= 1``.

    Returns
    -------
    tuple of int
        ``tuple(ceil(d / ssub) for d in dims)``.
    """
    ssub = int(ssub)
    if ssub < 1:
        raise ShapeMismatchError(f"ssub must be >= 1, got {ssub}")
    return tuple((int(d) - 1) // ssub + 1 for d in dims)


def infer_ssub_B(W_shape: tuple[int, ...], dims: tuple[int, ...]) -> int:
    """Infer the background downsampling factor ``ssub_B`` from ``W``'s shape.

    Follows CaImAn's ``Estimates.compute_background``:
    ``ssub_B = round(sqrt(P / P_ds))`` for 2D frames (for 3D frames, where this
    library averages blocks over all three axes, the cube root is used), and
    then checks that ``P_ds == prod(ceil(d / ssub_B))``. If the rounded
    candidate does not fit but exactly one other integer does (possible only
    for very elongated frames with ragged edges), that integer is returned.

    Parameters
    ----------
    W_shape : tuple of int
        Shape of the ring weight matrix, ``(P_ds, P_ds)``.
    dims : tuple of int
        Full-resolution frame shape, ``(d1, d2)`` or ``(d1, d2, d3)``.

    Returns
    -------
    int
        ``ssub_B >= 1``.

    Raises
    ------
    ValueError
        If ``W`` is not square or no integer block size produces ``P_ds``
        downsampled pixels (the message names ``W``'s shape, ``dims`` and the
        ``P_ds`` values that would fit), or if several do and the rounded one
        does not.
    """
    dims = _as_dims(dims)
    shape = tuple(int(s) for s in W_shape)
    P = math.prod(dims)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] <= 0:
        raise ShapeMismatchError(
            f"W must be a non-empty square (P_ds, P_ds) matrix; got shape {shape} "
            f"for dims {dims} (P = {P})"
        )
    P_ds = shape[0]
    nd = len(dims)
    candidate = max(1, round((P / P_ds) ** (1.0 / nd)))
    if math.prod(downsampled_dims(dims, candidate)) == P_ds:
        return candidate
    max_s = max(dims)
    fitting = [s for s in range(1, max_s + 1) if math.prod(downsampled_dims(dims, s)) == P_ds]
    if len(fitting) == 1:
        return fitting[0]
    # sizes that would fit, for the error message (distinct P_ds values)
    options: dict[int, int] = {}
    for s in range(1, min(max_s, 8) + 1):
        options.setdefault(math.prod(downsampled_dims(dims, s)), s)
    listing = ", ".join(f"ssub_B={s}: ({n}, {n})" for n, s in options.items())
    if fitting:
        raise ShapeMismatchError(
            f"W shape {shape} is ambiguous for dims {dims}: block sizes {fitting} "
            f"all give P_ds = {P_ds}, and the rounded estimate {candidate} does not"
        )
    raise ShapeMismatchError(
        f"W shape {shape} fits no integer ssub_B for dims {dims} (P = {P}); "
        f"W shapes that would fit: {listing}"
    )


# --------------------------------------------------------------------------
# block averaging and upsampling (C order, any number of leading axes)
# --------------------------------------------------------------------------


def _inverse_counts(dims: tuple[int, ...], ssub: int) -> np.ndarray:
    """``1 / (number of real pixels in each block)``, shape ``dims_ds``."""
    dims_ds = downsampled_dims(dims, ssub)
    inv = np.ones((), dtype=np.float64)
    for ax, (d, q) in enumerate(zip(dims, dims_ds, strict=True)):
        starts = np.arange(q) * ssub
        counts = np.minimum(ssub, d - starts).astype(np.float64)
        shape = [1] * len(dims)
        shape[ax] = q
        inv = inv * (1.0 / counts).reshape(shape)
    return np.ascontiguousarray(np.broadcast_to(inv, dims_ds))


def _block_sums(x: np.ndarray, ssub: int, nd: int, dtype: np.dtype) -> np.ndarray:
    """Sum ``ssub``-blocks over the last ``nd`` axes of ``x`` (ragged edges allowed).

    Works axis by axis with strided slices ``x[..., m::ssub, ...]`` (no padding,
    no dense matrix): along an axis of length ``d`` the result has
    ``ceil(d / ssub)`` entries and the slice for offset ``m`` contributes to
    the first ``ceil((d - m) / ssub)`` of them. Returns a new C-contiguous
    array of ``dtype``.
    """
    acc = x
    for k in range(x.ndim - nd, x.ndim):
        head = (slice(None),) * k
        first = acc[(*head, slice(0, None, ssub))]
        out = np.array(first, dtype=dtype, order="C", copy=True)
        for m in range(1, ssub):
            part = acc[(*head, slice(m, None, ssub))]
            length = part.shape[k]
            if length == 0:
                break
            out[(*head, slice(0, length))] += part
        acc = out
    return acc


def _repeat_crop(z: np.ndarray, ssub: int, dims: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour repeat of the last ``len(dims)`` axes, cropped to ``dims``.

    Returns a (possibly non-contiguous) view of a freshly allocated array.
    """
    nd = len(dims)
    r = z
    for k in range(z.ndim - 1, z.ndim - nd - 1, -1):
        d = dims[k - (z.ndim - nd)]
        r = np.repeat(r, ssub, axis=k)
        if r.shape[k] != d:
            r = r[(slice(None),) * k + (slice(0, d),)]
    return r


def decimate(frames: npt.ArrayLike, ssub: int, dims: tuple[int, ...]) -> np.ndarray:
    """Block-mean downsampling with ragged edges (CaImAn's ``D``, in C order).

    Each ``ssub x ssub (x ssub)`` block of a frame is replaced by its mean; a
    block cut short by the frame edge averages only the pixels it has.

    Parameters
    ----------
    frames : array_like, shape (..., *dims)
        One frame or a stack of frames; the last ``len(dims)`` axes must equal
        ``dims``. Any real dtype.
    ssub : int
        Block size along every axis, ``>= 1``.
    dims : tuple of int
        Frame shape, ``(d1, d2)`` or ``(d1, d2, d3)``.

    Returns
    -------
    numpy.ndarray, shape (..., *ceil(dims / ssub))
        Block means, C-contiguous, new array; same dtype as the input if it is
        floating, float64 otherwise.
    """
    dims = _as_dims(dims)
    x = np.asarray(frames)
    nd = len(dims)
    if x.ndim < nd or x.shape[x.ndim - nd :] != dims:
        raise ShapeMismatchError(f"frames shape {x.shape} does not end with dims {dims}")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    ssub = int(ssub)
    if ssub < 1:
        raise ShapeMismatchError(f"ssub must be >= 1, got {ssub}")
    if ssub == 1:
        return np.array(x, dtype=dtype, order="C", copy=True)
    sums = _block_sums(x, ssub, nd, dtype)
    sums *= _inverse_counts(dims, ssub).astype(dtype, copy=False)
    return sums


def upsample(frames_ds: npt.ArrayLike, ssub: int, dims: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling by ``ssub`` and crop to ``dims`` (CaImAn's ``U``).

    Parameters
    ----------
    frames_ds : array_like, shape (..., *ceil(dims / ssub))
        Downsampled frame(s) in C order.
    ssub : int
        Block size along every axis, ``>= 1``.
    dims : tuple of int
        Full-resolution frame shape to crop to.

    Returns
    -------
    numpy.ndarray, shape (..., *dims)
        Each downsampled pixel repeated ``ssub`` times along every axis, then
        cropped; C-contiguous new array, same dtype as the input if it is
        floating, float64 otherwise.
    """
    dims = _as_dims(dims)
    z = np.asarray(frames_ds)
    ssub = int(ssub)
    dims_ds = downsampled_dims(dims, ssub)
    nd = len(dims)
    if z.ndim < nd or z.shape[z.ndim - nd :] != dims_ds:
        raise ShapeMismatchError(
            f"frames_ds shape {z.shape} does not end with the downsampled dims "
            f"{dims_ds} (dims {dims}, ssub {ssub})"
        )
    dtype = z.dtype if np.issubdtype(z.dtype, np.floating) else np.dtype(np.float64)
    if ssub == 1:
        return np.array(z, dtype=dtype, order="C", copy=True)
    return np.array(_repeat_crop(z, ssub, dims), dtype=dtype, order="C", copy=True)


# --------------------------------------------------------------------------
# the operator
# --------------------------------------------------------------------------


def _fortran_to_c_perm(shape: tuple[int, ...]) -> np.ndarray:
    """``perm[c] = f``: Fortran flat index of the pixel whose C flat index is ``c``."""
    n = math.prod(shape)
    return np.arange(n, dtype=np.int64).reshape(shape, order="F").ravel(order="C")


@dataclass(frozen=True, eq=False)
class RingOperator:
    """Precomputed ring-model background operator, all in C pixel order.

    Build it with :func:`prepare_ring`; apply it with :func:`ring_frames`.

    Attributes
    ----------
    dims : tuple of int
        Full-resolution frame shape.
    ssub_B : int
        Block size of the background grid (same along every axis).
    dims_ds : tuple of int
        Downsampled grid shape, ``ceil(dims / ssub_B)``.
    W : scipy.sparse.csr_matrix, shape (P_ds, P_ds)
        Ring weights with rows and columns in C order of ``dims_ds``.
    b0 : numpy.ndarray, shape dims
        Constant baseline as an image (C-contiguous, read-only).
    b0_ds : numpy.ndarray, shape (P_ds,)
        ``D·b0`` in C order of ``dims_ds`` (read-only).
    inv_counts : numpy.ndarray, shape dims_ds
        ``1 / (pixels per block)`` (read-only).
    dtype : numpy.dtype
        Floating dtype of the computation and of the output.
    A : scipy.sparse.csr_matrix, shape (P, K)
        The footprints in C pixel order (float64; ``K = 0`` when not given), for ``D·A``.
    W_f : scipy.sparse.spmatrix
        ``W`` as CaImAn stores it (Fortran order of ``dims_ds``).
    """

    dims: tuple[int, ...]
    ssub_B: int
    dims_ds: tuple[int, ...]
    W: sp.csr_matrix
    b0: np.ndarray
    b0_ds: np.ndarray
    inv_counts: np.ndarray
    dtype: np.dtype
    A: sp.csr_matrix
    W_f: Any

    def layout(self, fortran: bool) -> RingLayout:
        """The operator for frames in Fortran (CaImAn's) or C pixel order (built once)."""
        return self._fortran if fortran else self._c

    @cached_property
    def _c(self) -> RingLayout:
        return _layout(self.dims, self.ssub_B, self.W, self.b0.reshape(-1), self.A, self.dtype)

    @cached_property
    def _fortran(self) -> RingLayout:
        P = self.n_pixels
        f_to_c = np.arange(P).reshape(self.dims).ravel(order="F")  # C index of each F pixel
        to_f = _fortran_to_c_perm(self.dims_ds)  # W's row (Fortran) of each C-ordered block
        W_rows_c = sp.csr_matrix(self.W_f)[to_f]  # rows in C order: Z comes out in C order
        ptr_c, idx_c, _ = _grid(self.dims, self.ssub_B)
        return _layout(
            self.dims[::-1],
            self.ssub_B,
            W_rows_c,
            self.b0.reshape(-1)[f_to_c],
            self.A[f_to_c],
            self.dtype,
            c_rows=(ptr_c, idx_c),
            W_own=self.W_f,
        )

    @property
    def n_pixels(self) -> int:
        """Number of full-resolution pixels ``P``."""
        return math.prod(self.dims)

    @property
    def n_pixels_ds(self) -> int:
        """Number of downsampled pixels ``P_ds``."""
        return math.prod(self.dims_ds)


@dataclass(frozen=True, eq=False)
class RingLayout:
    """The ring operator for frames stored in one pixel order: the C order of ``dims``
    (``dims`` reversed for CaImAn's Fortran order), a frame viewed as ``(rows, cols)``.

    Attributes
    ----------
    dims, dims_ds
        Frame and downsampled-grid shapes in this order.
    ssub
        Block size.
    W_ptr, W_idx, W_val
        CSR of ``W`` ``(P_ds, P_ds)`` (unsigned indices, values in the operator's dtype):
        columns in this order (``X``'s rows), rows in C order, so ``Z = W·X`` is in C order
        whatever the frames' order.
    Wo_ptr, Wo_idx, Wo_val
        The same with rows in this order too (for the statistics, which read ``Z`` at each
        pixel in this order).
    b0
        ``(P,)`` baseline in this order, in the dtype.
    b0_ds, inv
        ``D·b0`` and ``1 / pixels per block`` ``(P_ds,)``, float64.
    row_ptr, row_idx
        CSR of the frame rows each downsampled row averages.
    c_rows
        ``row_ptr`` / ``row_idx`` of the frame's C order (the output's).
    own
        ``(P,)`` uint32: the block of each pixel in this order's grid.

    DA
        CSR ``D·A`` ``(P_ds, K)``, float64.
    da_rows, da_rstart
        ``DA``'s non-empty rows (int64, increasing) and, per downsampled row, where its
        blocks start among them.
    moments
        The footprints prepared for :func:`~._ring_kernels.ring_fold` (this order).
    """

    dims: tuple[int, ...]
    dims_ds: tuple[int, ...]
    ssub: int
    W_ptr: np.ndarray
    W_idx: np.ndarray
    W_val: np.ndarray
    Wo_ptr: np.ndarray
    Wo_idx: np.ndarray
    Wo_val: np.ndarray
    b0: np.ndarray
    b0_ds: np.ndarray
    inv: np.ndarray
    row_ptr: np.ndarray
    row_idx: np.ndarray
    c_rows: tuple[np.ndarray, np.ndarray]
    own: np.ndarray
    DA: sp.csr_matrix
    da_rows: np.ndarray
    da_rstart: np.ndarray
    moments: MomentsOperator

    @property
    def n_pixels_ds(self) -> int:
        return math.prod(self.dims_ds)

    @property
    def n_rows_ds(self) -> int:
        """Rows of the downsampled grid (all axes but the last)."""
        return len(self.row_ptr) - 1


def _grid(dims: tuple[int, ...], s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The downsampled grid of frames in the C order of ``dims`` viewed as ``(rows, cols)``:
    CSR ``row_ptr`` / ``row_idx`` of the frame rows of each downsampled row, and ``qmap``, the
    block (C order of the grid) of each pixel."""
    dims_ds = downsampled_dims(dims, s)
    lead = dims[:-1]
    idx = np.indices(lead).reshape(len(lead), -1)
    ds_row = np.asarray(np.ravel_multi_index(tuple(idx // s), dims_ds[:-1]), np.int64)
    row_idx = np.argsort(ds_row, kind="stable").astype(np.int64)
    row_ptr = np.zeros(math.prod(dims_ds[:-1]) + 1, np.int64)
    np.cumsum(np.bincount(ds_row, minlength=len(row_ptr) - 1), out=row_ptr[1:])
    cols = np.arange(dims[-1]) // s
    qmap = (ds_row[:, None] * dims_ds[-1] + cols[None, :]).reshape(-1).astype(np.uint32)
    return row_ptr, row_idx, qmap


def _unsigned(a: np.ndarray) -> np.ndarray:
    """Indices as unsigned ints (the compiled loops then skip negative-index handling: twice
    as fast a sparse product)."""
    return a.astype(np.uint32 if a.size == 0 or int(a.max()) < 2**32 else np.uint64)


def _csr(W: Any, dt: np.dtype) -> sp.csr_matrix:
    W = sp.csr_matrix(W, dtype=dt)
    W.sum_duplicates()
    W.sort_indices()
    return W


def _layout(
    dims: tuple[int, ...],
    s: int,
    W: Any,
    b0: np.ndarray,
    A: sp.spmatrix,
    dt: np.dtype,
    *,
    c_rows: tuple[np.ndarray, np.ndarray] | None = None,
    W_own: Any = None,
) -> RingLayout:
    """:class:`RingLayout` for frames in the C order of ``dims`` (``b0``, ``A`` and ``W``'s
    columns in it; ``W``'s rows in the C order of the grid; ``c_rows``: the C order's rows;
    ``W_own``: ``W`` with its rows in this order too; by default this grid's)."""
    dims_ds = downsampled_dims(dims, s)
    P, Pds = math.prod(dims), math.prod(dims_ds)
    row_ptr, row_idx, own = _grid(dims, s)
    inv = _inverse_counts(dims, s).reshape(-1).astype(np.float64)
    b0_ds = np.bincount(own, weights=np.asarray(b0, np.float64), minlength=Pds) * inv
    D = sp.csr_matrix((inv[own], (own, np.arange(P))), shape=(Pds, P))
    A = sp.csr_matrix(A, dtype=np.float64)
    DA = sp.csr_matrix(D @ A)
    DA.sum_duplicates()
    DA.sort_indices()  # (one order of the footprint term, however A's entries were stored)
    Wl = _csr(W, dt)
    Wo = Wl if W_own is None else _csr(W_own, dt)
    return RingLayout(
        dims=dims,
        dims_ds=dims_ds,
        ssub=s,
        W_ptr=_unsigned(Wl.indptr),
        W_idx=_unsigned(Wl.indices),
        W_val=Wl.data,
        Wo_ptr=_unsigned(Wo.indptr),
        Wo_idx=_unsigned(Wo.indices),
        Wo_val=Wo.data,
        b0=_readonly(np.ascontiguousarray(b0, dtype=dt)),
        b0_ds=_readonly(b0_ds),
        inv=_readonly(inv),
        row_ptr=row_ptr,
        row_idx=row_idx,
        c_rows=(row_ptr, row_idx) if c_rows is None else c_rows,
        own=own,
        DA=DA,
        da_rows=(da_rows := np.flatnonzero(np.diff(DA.indptr)).astype(np.int64)),
        da_rstart=np.searchsorted(da_rows, np.arange(len(row_ptr)) * dims_ds[-1]).astype(np.int64),
        moments=prepare_moments(sp.csc_matrix(A), None),
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def prepare_ring(
    W: Any,
    b0: npt.ArrayLike,
    dims: tuple[int, ...],
    *,
    dtype: npt.DTypeLike = np.float64,
    A: sp.spmatrix | None = None,
) -> RingOperator:
    """Build a :class:`RingOperator` from CaImAn's Fortran-ordered ``W`` and ``b0``.

    Parameters
    ----------
    W : scipy sparse matrix or array (any format), shape (P_ds, P_ds)
        ``estimates.W`` as CaImAn stores it: rows and columns index the
        downsampled grid ``ceil(dims / ssub_B)`` in Fortran order. A dense
        array is accepted too.
    b0 : array_like, shape (P,)
        ``estimates.b0`` in Fortran pixel order (``p = i + d1*j (+ d1*d2*k)``).
    dims : tuple of int
        Frame shape ``(d1, d2)`` or ``(d1, d2, d3)``.
    dtype : numpy dtype, optional
        Floating dtype used for ``W``, ``b0`` and all frame arithmetic
        (default float64, which reproduces CaImAn's float64 background to
        rounding; float32 is faster but differs from it by ~1e-4 on values
        ~1e3).
    A : scipy sparse matrix, shape (P, K), optional
        The footprints **in C pixel order** (for ``D·A`` of :func:`ring_x`); none: ``K = 0``.

    Returns
    -------
    RingOperator
        The operator in C pixel order.

    Raises
    ------
    ValueError
        If ``W``'s shape fits no block size for ``dims`` (see
        :func:`infer_ssub_B`), if ``b0`` does not have ``P`` entries, or if
        ``dtype`` is not a floating dtype.
    """
    dims = _as_dims(dims)
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise OptionError(f"dtype must be a floating dtype, got {dt}")
    ssub = infer_ssub_B(tuple(W.shape), dims)
    dims_ds = downsampled_dims(dims, ssub)
    P = math.prod(dims)

    b0_arr = np.asarray(b0)
    if b0_arr.size != P:
        raise ShapeMismatchError(f"b0 has {b0_arr.size} entries, expected P = {P} for dims {dims}")
    b0_img = np.ascontiguousarray(b0_arr.reshape(-1).reshape(dims, order="F"), dtype=dt)

    # permute W to C order of the downsampled grid: W_C[c1, c2] = W_F[perm[c1], perm[c2]]
    perm = _fortran_to_c_perm(dims_ds)
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size, dtype=perm.dtype)
    Wcoo = sp.coo_matrix(W)
    W_c = sp.csr_matrix(
        (
            Wcoo.data.astype(dt, copy=False),
            (inv_perm[Wcoo.row], inv_perm[Wcoo.col]),
        ),
        shape=Wcoo.shape,
        dtype=dt,
    )
    W_c.sum_duplicates()
    W_c.sort_indices()

    inv_counts = _inverse_counts(dims, ssub).astype(dt)
    b0_ds = (_block_sums(b0_img, ssub, len(dims), dt) * inv_counts).reshape(-1)

    A_c = sp.csr_matrix((P, 0)) if A is None else sp.csr_matrix(A, dtype=np.float64)
    if A_c.shape[0] != P:
        raise ShapeMismatchError(f"A has {A_c.shape[0]} rows, expected P = {P} for dims {dims}")
    return RingOperator(
        dims=dims,
        ssub_B=ssub,
        dims_ds=dims_ds,
        W=W_c,
        b0=_readonly(b0_img),
        b0_ds=_readonly(np.ascontiguousarray(b0_ds, dtype=dt)),
        inv_counts=_readonly(inv_counts),
        dtype=dt,
        A=A_c,
        W_f=W,
    )


def ring_frames(op: RingOperator, Y_frames: npt.ArrayLike, AC_frames: npt.ArrayLike) -> np.ndarray:
    """Ring-model background ``B`` for a block of frames.

    Computes ``B_t = b0 + U(W · (D·(Y_t - AC_t) - D·b0))`` for every frame of
    the block. Frames are independent: computing a subset of frames gives the
    same numbers as computing all of them and slicing (bit-identical with
    SciPy's CSR kernels, which sum each row's nonzeros in the same order for
    any number of right-hand sides).

    Parameters
    ----------
    op : RingOperator
        From :func:`prepare_ring`.
    Y_frames : array_like, shape (n, *dims)
        Movie frames in C layout (``frame[i, j]``), any real dtype.
    AC_frames : array_like, shape (n, *dims)
        The matching reconstructed-neuron frames ``A·C`` (all components, as
        CaImAn uses them for the background), any real dtype.

    Returns
    -------
    numpy.ndarray, shape (n, *dims)
        Background frames, dtype ``op.dtype`` (float64 by default),
        C-contiguous, freshly allocated.

    Raises
    ------
    ValueError
        If the two inputs do not both have shape ``(n, *dims)``.
    """
    Y = np.asarray(Y_frames)
    AC = np.asarray(AC_frames)
    dims = op.dims
    nd = len(dims)
    if Y.ndim != nd + 1 or Y.shape[1:] != dims:
        raise ShapeMismatchError(f"Y_frames must have shape (n, *{dims}), got {Y.shape}")
    if AC.shape != Y.shape:
        raise ShapeMismatchError(
            f"AC_frames shape {AC.shape} differs from Y_frames shape {Y.shape}"
        )
    n = Y.shape[0]
    dt = op.dtype
    ssub = op.ssub_B
    dims_ds = op.dims_ds
    P_ds = op.n_pixels_ds

    # X = Y - AC at full resolution (one pass, cast to the operator's dtype)
    X = np.subtract(Y, AC, dtype=dt, casting="unsafe")

    # D·X - D·b0, shape (n, P_ds)
    if ssub == 1:
        Xds = X.reshape(n, P_ds)
    else:
        Xds = _block_sums(X, ssub, len(dims), dt)
        Xds *= op.inv_counts
        Xds = Xds.reshape(n, P_ds)
    Xds -= op.b0_ds

    # W applied to all frames at once: (P_ds, P_ds) @ (P_ds, n)
    Z = op.W @ np.ascontiguousarray(Xds.T)  # (P_ds, n), C-contiguous
    Z = np.asarray(Z, dtype=dt).T.reshape((n, *dims_ds))

    # b0 + U(Z), written into a fresh C-contiguous output
    out = np.empty((n, *dims), dtype=dt)
    up = Z if ssub == 1 else _repeat_crop(Z, ssub, dims)
    np.add(up, op.b0, out=out)
    return out


# --------------------------------------------------------------------------
# the fast path: D·Y − (D·A)·C (CaImAn's own formula), compiled kernels
# --------------------------------------------------------------------------


def ring_x(
    L: RingLayout,
    rows: np.ndarray,
    Ct: np.ndarray,
    dtype: np.dtype,
    out: np.ndarray | None = None,
    part: range | None = None,
) -> np.ndarray:
    """``X = D·Y − (D·A)·C − D·b0`` ``(P_ds, n)`` in ``dtype`` for frames ``rows`` ``(n, P)``
    stored in ``L``'s pixel order, with traces ``Ct`` ``(n, K)`` of all components (into
    ``out``, downsampled rows ``part`` only when given: threads can share a frame)."""
    n = rows.shape[0]
    y = rows if rows.dtype.kind in "fiu" and rows.dtype.isnative else rows.astype(dtype)
    if y.dtype == np.float16:
        y = y.astype(np.float32)
    X = np.empty((L.n_pixels_ds, n), dtype) if out is None else out
    part = range(L.n_rows_ds) if part is None else part
    CtT = np.ascontiguousarray(np.asarray(Ct, np.float64).T)
    DA = L.DA
    ring_inputs(
        y.reshape(n, -1, L.dims[-1]),
        L.row_ptr,
        L.row_idx,
        L.ssub,
        L.dims_ds[-1],
        L.inv,
        L.b0_ds,
        L.da_rstart,
        L.da_rows,
        DA.indptr,
        DA.indices,
        DA.data,
        CtT,
        X,
        part.start,
        part.stop,
    )
    return X


def ring_z_into(L: RingLayout, X: np.ndarray, Z: np.ndarray, rows: range) -> None:
    """Rows ``rows`` of ``Z = W·X`` into ``Z``."""
    spmm(L.W_ptr, L.W_idx, L.W_val, X, Z, rows.start, rows.stop)


def ring_combine(
    op: RingOperator,
    L: RingLayout,
    out: np.ndarray,
    Z: np.ndarray,
    subtract: bool,
    part: range | None = None,
) -> None:
    """C-ordered frames ``out`` ``(n, P)``: ``B = b0 + U(Z)`` written, or subtracted
    (``Z`` from :func:`ring_z_into` in C order of the grid; downsampled rows ``part`` of the C
    grid only, when given)."""
    ptr, idx = L.c_rows
    part = range(len(ptr) - 1) if part is None else part
    combine(
        out,
        op.b0.reshape(-1),
        Z,
        ptr,
        idx,
        op.ssub_B,
        op.dims_ds[-1],
        subtract,
        part.start,
        part.stop,
    )


@dataclass(frozen=True)
class RingBlock:
    """A block's frames as stored (rows, pixel order), its ``X = D·Y − (D·A)·C − D·b0`` and
    ``Z = W·X``: what every ring movie of the block is made from."""

    rows: np.ndarray
    fortran: bool
    L: RingLayout
    X: np.ndarray
    Z: np.ndarray


def ring_block(op: RingOperator, Y: np.ndarray, Ct: np.ndarray, dtype: np.dtype) -> RingBlock:
    """:class:`RingBlock` of frames ``Y`` ``(n, *dims)`` (any layout) with the traces ``Ct``
    ``(n, K)`` of all the footprints ``op`` was prepared with (one thread)."""
    rows, fortran = frame_rows(Y)
    L = op.layout(fortran)
    X = ring_x(L, rows, Ct, dtype)
    Z = np.empty_like(X)
    ring_z_into(L, X, Z, range(L.n_pixels_ds))
    return RingBlock(rows, fortran, L, X, Z)


def ring_background(op: RingOperator, Y_frames: npt.ArrayLike, Ct: npt.ArrayLike) -> np.ndarray:
    """:func:`ring_frames` by CaImAn's formula ``b0 + U(W·(D·Y − (D·A)·C − D·b0))`` and the
    compiled kernels (one thread): frames ``(n, *dims)`` in C order, ``op.dtype``.

    ``Y_frames`` ``(n, *dims)`` in any layout; ``Ct`` ``(n, K)`` the traces of all the
    footprints ``op`` was prepared with."""
    Y = np.asarray(Y_frames)
    if Y.ndim != len(op.dims) + 1 or Y.shape[1:] != op.dims:
        raise ShapeMismatchError(f"Y_frames must have shape (n, *{op.dims}), got {Y.shape}")
    b = ring_block(op, Y, np.asarray(Ct), op.dtype)
    out = np.empty((Y.shape[0], op.n_pixels), op.dtype)
    ring_combine(op, b.L, out, b.Z, False)
    return out.reshape(Y.shape)


def ring_z_own(L: RingLayout, X: np.ndarray) -> np.ndarray:
    """``Z = W·X`` ``(P_ds, n)`` with the grid in ``L``'s own order (as pixels in ``L``'s
    order read it: :attr:`RingLayout.own`)."""
    Z = np.empty_like(X)
    spmm(L.Wo_ptr, L.Wo_idx, L.Wo_val, X, Z, 0, L.n_pixels_ds)
    return Z
