"""Block kernels for frames: plain NumPy / numba functions, no dask inside.

:func:`frames` writes frames in C pixel order into a caller-provided ``out`` array of shape
``(n, npix)`` (C-contiguous), so results never need a Fortran→C transpose; the footprints are
permuted to C pixel order once, beforehand. :func:`frames_reference` is its plain NumPy twin.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _buffers

__all__ = [
    "MomentsOperator",
    "MomentsState",
    "Runs",
    "c_to_f_permutation",
    "footprint_runs",
    "frames",
    "frames_reference",
    "fused",
    "n_bands",
    "prepare_moments",
    "residual_bands",
    "residual_moments",
]


def c_to_f_permutation(dims: Sequence[int]) -> np.ndarray:
    """``perm[p_c] = p_f``: the Fortran (CaImAn) index of each pixel taken in C order."""
    P = math.prod(dims)
    return np.arange(P, dtype=np.int64).reshape(tuple(dims), order="F").ravel(order="C")


@numba.njit(cache=True, nogil=True)
def _add_lowrank(o, b, f):  # pragma: no cover - compiled
    """``o += b @ f`` for one frame (``b`` is ``(npix, nb)``)."""
    nb = b.shape[1]
    P = o.shape[0]
    if nb == 1:
        f0 = f[0]
        for p in range(P):
            o[p] += b[p, 0] * f0
    elif nb == 2:
        f0 = f[0]
        f1 = f[1]
        for p in range(P):
            o[p] += b[p, 0] * f0 + b[p, 1] * f1
    else:
        for p in range(P):
            acc = 0.0
            for r in range(nb):
                acc += b[p, r] * f[r]
            o[p] += acc


#: Pixels per band of the frame kernels (a float64 band is 256 KiB: it stays in L2 while the
#: background and footprints are applied).
_BAND = 32768


@numba.njit(cache=True, nogil=True)
def _add_runs(o, bptr, gcomp, gptr, start, off, length, data, c, alpha):  # pragma: no cover
    """``o += alpha * A @ c`` with ``A`` as runs of consecutive pixels (see
    :func:`footprint_runs`), band of pixels by band.

    Each run is one contiguous, vectorisable multiply-add. Within a band, components come in
    order, so each pixel receives its components in the same order as a CSC scatter: results
    are identical to it.
    """
    for band in range(len(bptr) - 1):
        _add_band_runs(o, 0, band, bptr, gcomp, gptr, start, off, length, data, c, alpha)


def _lanes(context, builder, ty, value):  # pragma: no cover - compile time
    """A numba array argument's data pointer and the 8-lane vector type of its dtype."""
    ptr = cgutils.create_struct_proxy(ty)(context, builder, value=value).data
    return ptr, ir.VectorType(context.get_data_type(ty.dtype), 8)


def _vector_at(builder, base, pos, vec):  # pragma: no cover - compile time
    """A pointer to the vector ``vec`` starting at element ``pos`` of ``base``."""
    return builder.bitcast(builder.gep(base, [pos]), vec.as_pointer())


@intrinsic
def _axpy8(typingctx, o, oi, d, di, ck, m):  # pragma: no cover - compiled
    """``o[oi + k] += d[di + k] * ck`` for the lanes ``k < min(m, 8)`` (none when ``m <= 0``).

    One masked vector load of each operand, a multiply and an add (not fused: rounded as the
    scalar loop), one masked store. Masked-off lanes touch no memory, so a run's last vector
    may reach past the end of either array. ``o`` and ``d``: 1D contiguous arrays of one float
    dtype; offsets in elements.
    """
    if o.dtype != d.dtype or o.layout != "C" or d.layout != "C":
        return None  # (a typing error, never a silently wrong stride)
    sig = types.void(o, types.intp, d, types.intp, o.dtype, types.intp)

    def codegen(context, builder, signature, args):
        o_ty, _, d_ty, _, _, _ = signature.args
        o_v, oi_v, d_v, di_v, ck_v, m_v = args
        o_p, vec = _lanes(context, builder, o_ty, o_v)
        d_p, _ = _lanes(context, builder, d_ty, d_v)
        ivec = ir.VectorType(m_v.type, 8)
        mvec, i32 = ir.VectorType(ir.IntType(1), 8), ir.IntType(32)

        def splat(x, ty):
            v = builder.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, 8), [0] * 8))

        mask = builder.icmp_signed("<", ir.Constant(ivec, list(range(8))), splat(m_v, ivec))
        name = "v8f64" if vec.element == ir.DoubleType() else "v8f32"
        ptr = vec.as_pointer()
        load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vec, [ptr, i32, mvec, vec]),
            f"llvm.masked.load.{name}.p0",
        )
        store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vec, ptr, i32, mvec]),
            f"llvm.masked.store.{name}.p0",
        )
        align, zero = ir.Constant(i32, 1), ir.Constant(vec, None)
        po, pd = _vector_at(builder, o_p, oi_v, vec), _vector_at(builder, d_p, di_v, vec)
        dv = builder.call(load, [pd, align, mask, zero])
        ov = builder.call(load, [po, align, mask, zero])
        builder.call(store, [builder.fadd(ov, builder.fmul(dv, splat(ck_v, vec))), po, align, mask])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _add_band_runs(
    o, q0, band, bptr, gcomp, gptr, start, off, length, data, c, alpha
):  # pragma: no cover - compiled
    """``o[p - q0] += alpha * (A @ c)[p]`` for the pixels ``p`` of one band (see
    :func:`_add_runs`; ``q0``: the pixel at ``o[0]``).

    A run is a few masked vectors of 8 (:func:`_axpy8`); footprint rows are rarely longer
    than 16 pixels, so the first two are issued unconditionally, with no branch to mispredict
    on the run's length.
    """
    for g in range(bptr[band], bptr[band + 1]):
        ck = c[gcomp[g]] * alpha
        if ck != 0.0:
            for r in range(gptr[g], gptr[g + 1]):
                s, d, n = start[r] - q0, off[r], length[r]
                _axpy8(o, s, data, d, ck, n)
                _axpy8(o, s + 8, data, d + 8, ck, n - 8)
                for i in range(16, n, 8):
                    _axpy8(o, s + i, data, d + i, ck, n - i)


@dataclass(frozen=True)
class Runs:
    """Footprints (CSC, rows = pixels) as runs of consecutive pixels, grouped by band of
    pixels, then by component."""

    bptr: np.ndarray  # int64 (n_bands + 1,): each band's groups
    gcomp: np.ndarray  # int64: each group's component
    gptr: np.ndarray  # int64 (n_groups + 1,): each group's runs
    start: np.ndarray  # int64: each run's first pixel
    off: np.ndarray  # int64: each run's first stored entry
    length: np.ndarray  # int64: each run's length
    data: np.ndarray  # the CSC's values

    @property
    def comp(self) -> np.ndarray:
        """Each run's component."""
        return np.repeat(self.gcomp, np.diff(self.gptr))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel's arguments, in order."""
        return self.bptr, self.gcomp, self.gptr, self.start, self.off, self.length, self.data


def footprint_runs(A: scipy.sparse.csc_matrix) -> Runs:
    """``A``'s columns as runs of consecutive rows; computed once and kept on ``A``.

    Footprints are compact blobs, so a component of ~150 pixels is ~12 runs: the frame kernel
    then does a few contiguous multiply-adds instead of ~150 scattered ones. Runs are split at
    band boundaries (:data:`_BAND` pixels) and ordered by band, then component.
    """
    runs = A.__dict__.get("_caiman_dask_runs")
    if runs is not None:
        return runs
    if not A.has_sorted_indices:
        A = A.sorted_indices()
    P, K = A.shape
    idx = A.indices.astype(np.int64)
    nnz = len(idx)
    col = np.repeat(np.arange(K, dtype=np.int64), np.diff(A.indptr))
    band = idx // _BAND
    new = np.ones(nnz, bool)
    if nnz:
        new[1:] = (idx[1:] != idx[:-1] + 1) | (col[1:] != col[:-1]) | (band[1:] != band[:-1])
    off = np.flatnonzero(new).astype(np.int64)
    length = np.diff(np.append(off, nnz)).astype(np.int64)
    order = np.lexsort((col[off], band[off]))  # by band, then component
    off, length = off[order], length[order]
    rband, rcomp = band[off], col[off]
    first = np.ones(len(off), bool)  # first run of each (band, component) group
    first[1:] = (rband[1:] != rband[:-1]) | (rcomp[1:] != rcomp[:-1])
    g0 = np.flatnonzero(first)
    n_bands = max(1, -(-P // _BAND))
    runs = Runs(
        bptr=np.searchsorted(rband[g0], np.arange(n_bands + 1)).astype(np.int64),
        gcomp=rcomp[g0],
        gptr=np.append(g0, len(off)).astype(np.int64),
        start=idx[off],
        off=off,
        length=length,
        data=A.data,
    )
    A.__dict__["_caiman_dask_runs"] = runs
    return runs


@numba.njit(cache=True, nogil=True)
def _set_minus_lowrank(o, y, b, f):  # pragma: no cover - compiled
    """``o = y - b @ f`` for one C-ordered frame ``y`` (one streaming pass)."""
    P = o.shape[0]
    nb = b.shape[1]
    if nb == 0:
        for p in range(P):
            o[p] = y[p]
    elif nb == 1:
        f0 = f[0]
        for p in range(P):
            o[p] = y[p] - b[p, 0] * f0
    elif nb == 2:
        f0 = f[0]
        f1 = f[1]
        for p in range(P):
            o[p] = y[p] - (b[p, 0] * f0 + b[p, 1] * f1)
    else:
        for p in range(P):
            acc = 0.0
            for r in range(nb):
                acc += b[p, r] * f[r]
            o[p] = y[p] - acc


@intrinsic
def _transpose8(typingctx, src, s0, ss, dst, d0, ds):  # pragma: no cover - compiled
    """``dst[d0 + c * ds + r] = src[s0 + r * ss + c]`` for ``r, c < 8``: one 8 × 8 block.

    Eight vector loads, the classic three-stage shuffle network (pairs, quads, halves), eight
    vector stores, with the conversion to ``dst``'s dtype done on whole vectors. Numba's scalar
    loops cannot emit shuffles; LLVM lowers these to the machine's own (AVX, SSE, NEON).
    ``src`` / ``dst``: 1D contiguous arrays, ``dst`` of ``src``'s dtype or a float one (``src``
    may hold integers, e.g. a TIFF's uint16 frames); offsets and strides in elements; no bounds
    checks (the caller guarantees the block is inside both arrays).
    """
    if src.layout != "C" or dst.layout != "C":
        return None  # (a typing error, never a silently wrong stride)
    if src.dtype != dst.dtype and not isinstance(dst.dtype, types.Float):
        return None  # converts only into floats
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        src_ty, _, _, dst_ty, _, _ = signature.args
        src_v, s0_v, ss_v, dst_v, d0_v, ds_v = args
        src_p, s_vec = _lanes(context, builder, src_ty, src_v)
        dst_p, d_vec = _lanes(context, builder, dst_ty, dst_v)
        s_el, d_el = s_vec.element, d_vec.element

        def at(base, off, stride, k, vec):
            pos = builder.add(off, builder.mul(stride, ir.Constant(stride.type, k)))
            return _vector_at(builder, base, pos, vec)

        def shuffle(a, b, idx):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), idx))

        rows = [builder.load(at(src_p, s0_v, ss_v, r, s_vec), align=1) for r in range(8)]
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
        pairs = []
        for k in range(0, 8, 2):
            pairs += [shuffle(rows[k], rows[k + 1], lo), shuffle(rows[k], rows[k + 1], hi)]
        lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        quads = []
        for a, b in ((0, 2), (1, 3), (4, 6), (5, 7)):
            quads += [shuffle(pairs[a], pairs[b], lo2), shuffle(pairs[a], pairs[b], hi2)]
        cols = [shuffle(quads[k], quads[k + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for k in range(4)]
        cols += [shuffle(quads[k], quads[k + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for k in range(4)]
        size = d_el.get_abi_size(context.target_data) - s_el.get_abi_size(context.target_data)
        for c, v in enumerate(cols):
            if src_ty.dtype != dst_ty.dtype:
                if isinstance(src_ty.dtype, types.Integer):  # (a TIFF's uint16 frames)
                    v = (builder.sitofp if src_ty.dtype.signed else builder.uitofp)(v, d_vec)
                else:
                    v = builder.fpext(v, d_vec) if size > 0 else builder.fptrunc(v, d_vec)
            builder.store(v, at(dst_p, d0_v, ds_v, c, d_vec), align=1)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _copy_rows(o, q0, y, transposed, h, w, p0, p1):  # pragma: no cover - compiled
    """``o[p - q0] = frame[p]`` for C-order pixels ``p0 <= p < p1`` of an ``h × w`` frame
    stored flat in ``y``: in C order, or transposed (``y[j * h + i]`` is pixel ``(i, j)``)."""
    if not transposed:
        for p in range(p0, p1):
            o[p - q0] = y[p]
        return
    ra = min(-(-p0 // w), p1 // w)  # first full row; rows ra:rb are whole, the rest partial
    rb = p1 // w
    for p in range(p0, min(p1, ra * w)):  # the band's first, partial row
        o[p - q0] = y[(p % w) * h + p // w]
    i0 = ra
    while i0 + 8 <= rb:  # 8 × 8 blocks
        j0 = 0
        while j0 + 8 <= w:
            _transpose8(y, j0 * h + i0, h, o, i0 * w + j0 - q0, w)
            j0 += 8
        for i in range(i0, i0 + 8):
            for j in range(j0, w):
                o[i * w + j - q0] = y[j * h + i]
        i0 += 8
    for i in range(i0, rb):
        for j in range(w):
            o[i * w + j - q0] = y[j * h + i]
    for p in range(max(p0, rb * w), p1):  # the band's last, partial row
        o[p - q0] = y[(p % w) * h + p // w]


@numba.njit(cache=True, nogil=True)
def _residual_bands(
    out,
    y,
    transposed,
    h,
    w,
    b,
    ft,
    bptr,
    gcomp,
    gptr,
    start,
    off,
    length,
    data,
    Ct,
    minus,
    band0,
    band1,
    sb,
):  # pragma: no cover - compiled
    """``out[t] = Y[t] - b @ ft[t] - A @ Ct[t]`` for ``h × w`` frames, pixel bands
    ``band0:band1``.

    ``out`` is ``(n, h * w)`` in C pixel order; ``y`` is ``(n, h * w)``, each frame in C order
    or ``transposed`` (a frame-major CaImAn memmap: Fortran pixel order). Band by band
    (:data:`_BAND` pixels, as in :func:`footprint_runs`), frames inside. Each band of a frame
    is assembled in the scratch band ``sb``, which stays in cache: copied in from ``y``
    (transposed 8 × 8 blocks at a time), the background subtracted in one contiguous sweep (the
    band's rows of ``b`` serve all frames), the band's footprint runs subtracted; then it is
    copied out in one sequential sweep. (Transposed stores straight into ``out``, whose lines
    are not in cache, cost three times as much.) Per pixel the arithmetic is that of
    :func:`frames`. ``minus``: -1 in ``out``'s dtype (the footprints' factor, as in
    :func:`_add_runs`).
    """
    n = y.shape[0]
    P = h * w
    for band in range(band0, band1):
        p0 = band * _BAND
        p1 = min(P, p0 + _BAND)
        bb = b[p0:p1]
        s = sb[: p1 - p0]
        for t in range(n):
            _copy_rows(s, p0, y[t], transposed, h, w, p0, p1)
            if bb.shape[1]:
                _add_lowrank(s, bb, -ft[t])  # o - (b f), rounded exactly as y - (b f)
            _add_band_runs(s, p0, band, bptr, gcomp, gptr, start, off, length, data, Ct[t], minus)
            ob = out[t, p0:p1]
            for q in range(p1 - p0):
                ob[q] = s[q]


@numba.njit(cache=True, nogil=True)
def _model_bands(
    out, b, ft, bptr, gcomp, gptr, start, off, length, data, Ct, zero, one, band0, band1
):  # pragma: no cover - compiled
    """``out[t] = b @ ft[t] + A @ Ct[t]`` for pixel bands ``band0:band1``, band by band with
    frames inside: each band of a frame is written once in a sequential sweep (the low-rank
    term, or ``zero``), and its footprint runs added while it is in cache; the band's rows of
    ``b`` and its runs serve all frames.

    ``zero`` and ``one``: 0 and 1 in ``out``'s dtype (passed in, so that the compiler does not
    turn the zeroing loop into ``memset``, slower here than plain vector stores).
    """
    n, P = out.shape
    nb = b.shape[1]
    for band in range(band0, band1):
        p0 = band * _BAND
        p1 = min(P, p0 + _BAND)
        bb = b[p0:p1]
        for t in range(n):
            ob = out[t, p0:p1]
            if nb == 0:
                for q in range(p1 - p0):
                    ob[q] = zero
            elif nb == 1:
                f0 = ft[t, 0]
                for q in range(p1 - p0):
                    ob[q] = zero + bb[q, 0] * f0
            elif nb == 2:
                f0 = ft[t, 0]
                f1 = ft[t, 1]
                for q in range(p1 - p0):
                    ob[q] = zero + (bb[q, 0] * f0 + bb[q, 1] * f1)
            else:
                for q in range(p1 - p0):
                    acc = 0.0  # as in _add_lowrank
                    for r in range(nb):
                        acc += bb[q, r] * ft[t, r]
                    ob[q] = zero + acc
            _add_band_runs(ob, p0, band, bptr, gcomp, gptr, start, off, length, data, Ct[t], one)


#: Pixels per tile of :func:`_gather_pixel_major`.
_GATHER_TILE = 512


@numba.njit(cache=True, nogil=True)
def _gather_pixel_major(z, src, s, n, P, pa, pb):  # pragma: no cover - compiled
    """``z[t * P + p] = src[p * s + t]`` for ``t < n``, ``pa <= p < pb``: frames of ``P``
    pixels out of a pixel-major block (each pixel's ``n`` values contiguous, pixels ``s``
    apart), 8 pixels × 8 frames at a time (:func:`_transpose8`).

    Tiles of :data:`_GATHER_TILE` pixels × 8 frames: a tile reads one short run from each of
    its pixels' rows (a page each: few enough for the TLB; the next tile of frames reads the
    same lines again from cache) and writes 8 frames, whose rows are a power of two apart in
    a 512 × 512 movie, so more of them at once would evict each other from the cache's sets.
    """
    if n < 8:  # (one frame: a plain strided gather, which the compiler vectorises)
        for t in range(n):
            for p in range(pa, pb):
                z[t * P + p] = src[p * s + t]
        return
    for q0 in range(pa, pb, _GATHER_TILE):
        q1 = min(pb, q0 + _GATHER_TILE)
        for t0 in range(0, n, 8):
            t1 = min(n, t0 + 8)
            p0 = q0
            if t1 - t0 == 8:
                while p0 + 8 <= q1:
                    _transpose8(src, p0 * s + t0, s, z, t0 * P + p0, P)
                    p0 += 8
            for p in range(p0, q1):
                for t in range(t0, t1):
                    z[t * P + p] = src[p * s + t]


#: Frames gathered out of a pixel-major movie at a time (32 MiB of 512 × 512 float32 frames).
_GATHER_FRAMES = 32


def pixel_major(Y: np.ndarray, npix: int) -> bool:
    """Whether ``Y`` is ``(n, h, w)`` frames of a pixel-major movie (a CaImAn ``order_C``
    memmap, the one CNMF reads): ``Y[t, i, j]`` at element ``t + s * (i + h * j)``, ``s >= n``.
    """
    if not _frames_2d(Y, npix):
        return False
    n, h, _ = Y.shape
    it = Y.itemsize
    s = Y.strides[1]
    return Y.strides[0] == it and s % it == 0 and s >= n * it and Y.strides[2] == h * s


def gather_pixel_major(z: np.ndarray, Y: np.ndarray, pixels: range) -> None:
    """Write pixels ``pixels`` (Fortran order) of the :func:`pixel_major` frames ``Y``
    (``(n, h, w)``) into ``z``: ``(n, w, h)`` C-contiguous, i.e. frame-major frames in Fortran
    pixel order, as :func:`residual_bands` reads them (``z.transpose(0, 2, 1)``). Pixel ranges
    are independent: threads can share the frames."""
    n, h, w = Y.shape
    s = Y.strides[1] // Y.itemsize
    span = (h * w - 1) * s + n
    src = np.lib.stride_tricks.as_strided(Y, shape=(span,), strides=(Y.itemsize,), writeable=False)
    _gather_pixel_major(z.reshape(-1), src, s, n, h * w, pixels.start, pixels.stop)


def n_bands(npix: int) -> int:
    """Bands of :data:`_BAND` pixels in a frame of ``npix`` pixels."""
    return max(1, -(-npix // _BAND))


def fused(Y: np.ndarray, npix: int) -> bool:
    """Whether :func:`residual_bands` takes movie frames ``Y``: ``(n, h, w)`` 2D frames of
    ``npix`` pixels, stored frame after frame in C or Fortran pixel order (a frame-major memmap;
    not a pixel-major one, whose frames are strided)."""
    if not _frames_2d(Y, npix):
        return False
    return Y.flags.c_contiguous or Y.transpose(0, 2, 1).flags.c_contiguous


def _frames_2d(Y: np.ndarray, npix: int) -> bool:
    """Whether ``Y`` is a non-empty ``(n, h, w)`` block of 2D frames of ``npix`` pixels in a
    dtype the compiled kernels read."""
    return Y.ndim == 3 and Y.shape[1] * Y.shape[2] == npix and len(Y) > 0 and _numeric(Y)


def _numeric(Y: np.ndarray) -> bool:
    """Whether the compiled kernels read ``Y``'s dtype (native-endian floats and integers)."""
    return Y.dtype.kind in "fiu" and Y.dtype.isnative


def _operands(
    dt: np.dtype,
    npix: int,
    n: int,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None,
    ft: np.ndarray | None,
) -> tuple[scipy.sparse.csc_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """The frame kernels' operands in dtype ``dt`` (no background: zero columns)."""
    if b is None or ft is None:
        b = np.zeros((npix, 0), dt)
        ft = np.zeros((n, 0), dt)
    b = np.ascontiguousarray(b, dtype=dt)
    ft = np.ascontiguousarray(ft, dtype=dt)
    Ct = np.ascontiguousarray(Ct, dtype=dt)
    if A.data.dtype != dt:
        A = A.astype(dt)
    return A, Ct, b, ft


def residual_bands(
    out: np.ndarray,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None,
    ft: np.ndarray | None,
    Y: np.ndarray,
    bands: range,
) -> None:
    """:func:`frames` with a movie whose frames pass :func:`fused`, for pixel bands ``bands``
    only (bands are independent: threads can share one frame)."""
    n, npix = out.shape
    A, Ct, b, ft = _operands(out.dtype, npix, n, A, Ct, b, ft)
    h, w = Y.shape[1:]
    transposed = not Y.flags.c_contiguous
    y = (Y.transpose(0, 2, 1) if transposed else Y).reshape(n, npix)  # no copy (see fused)
    runs = footprint_runs(A).arrays()
    minus = out.dtype.type(-1.0)
    sb = _scratch_band(out.dtype)
    _residual_bands(out, y, transposed, h, w, b, ft, *runs, Ct, minus, bands.start, bands.stop, sb)


_local = threading.local()


def _scratch_band(dt: np.dtype) -> np.ndarray:
    """This thread's scratch band of :data:`_BAND` pixels in ``dt`` (kept: stays in cache)."""
    bufs = _local.__dict__.setdefault("bands", {})
    buf = bufs.get(dt)
    if buf is None:
        buf = bufs[dt] = np.empty(_BAND, dt)
    return buf


def frames(
    out: np.ndarray,
    A: scipy.sparse.csc_matrix,
    Ct: np.ndarray,
    b: np.ndarray | None = None,
    ft: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> None:
    """Write ``out[t] = Y[t] − (b @ ft[t] + A @ Ct[t])``, or ``b @ ft[t] + A @ Ct[t]`` without Y.

    Band of :data:`_BAND` pixels by band, frames inside, so each band of an output frame is
    assembled in cache and written out once: the low-rank term (or zeros; for residuals the
    movie minus it) first, then the footprints of the non-zero traces added (runs of
    consecutive pixels in CSC column order, rows = pixels in C order; see
    :func:`footprint_runs`). Without a movie that is :func:`_model_bands`; 2D movie frames
    stored frame by frame (C order, or a frame-major memmap's Fortran order; see
    :func:`fused`) take :func:`residual_bands`, with the movie's frames reordered in cache as
    they are read; a pixel-major memmap's frames (see :func:`pixel_major`) are first gathered
    into frame-major scratch a block at a time. Other movies (3D, other strides) go frame by
    frame. Every path does the same arithmetic per pixel: results are bitwise the same.

    Parameters
    ----------
    out
        ``(n, npix)`` C-contiguous, float32 or float64.
    A
        CSC ``(npix, K)``, rows in the output's pixel order.
    Ct
        Traces ``(n, K)``.
    b, ft
        Low-rank background ``(npix, nb)`` and ``(n, nb)``, or ``None``.
    Y
        Movie frames ``(n, ...)`` with ``npix`` pixels each, any strides (e.g. a transposed
        memmap view), or ``None``.
    """
    n, npix = out.shape
    if n == 0:
        return
    if Y is not None and fused(Y, npix):
        residual_bands(out, A, Ct, b, ft, Y, range(n_bands(npix)))
        return
    if Y is not None and pixel_major(Y, npix):
        # a block of frames at a time into frame-major scratch, each pixel's run of values
        # read once (not one strided pass over the whole file per frame), then the fused kernel
        h, w = Y.shape[1:]
        k = min(n, _GATHER_FRAMES)
        z = _buffers.empty((k, w, h), Y.dtype)
        for t0 in range(0, n, k):
            rows = slice(t0, min(n, t0 + k))
            zb = z[: rows.stop - t0]
            gather_pixel_major(zb, Y[rows], range(npix))
            fb = None if ft is None else ft[rows]
            frames(out[rows], A, Ct[rows], b, fb, zb.transpose(0, 2, 1))
        return
    dt = out.dtype
    A, Ct, b, ft = _operands(dt, npix, n, A, Ct, b, ft)
    runs = footprint_runs(A).arrays()
    if Y is None:
        _model_bands(out, b, ft, *runs, Ct, dt.type(0.0), dt.type(1.0), 0, n_bands(npix))
        return
    minus = dt.type(-1.0)
    for t in range(n):
        o = out[t]
        # NumPy reorders a strided or 3D frame fastest in its own dtype; then it is taken in
        # the output's dtype, as the fused kernel reads it, and one pass subtracts the background
        y = np.ascontiguousarray(Y[t]).reshape(-1)
        if y.dtype != dt:
            y = y.astype(dt)
        _set_minus_lowrank(o, y, b, ft[t])
        _add_runs(o, *runs, Ct[t], minus)


#: Pixels per tile of :func:`_moments_update` (tile accumulators stay in L2).
_TILE = 2048
#: Frames per call of :func:`_moments_update` (bounds its footprint-product buffer).
_SUB_FRAMES = 32


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
        for i in range(m):
            row = AC[i]
            for t in range(n):
                row[t] = 0.0
            for j in range(cptr[c0 + i], cptr[c0 + i + 1]):
                a = cdat[j]
                ck = CtT[cidx[j]]
                for t in range(n):
                    row[t] += a * ck[t]
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
                    u1, u2, mn, mx = _fold(v, shq, u1, u2, mn, mx)
                    v = yb[q] - (bq0 * fb0 + bq1 * fb1) - eb[q]
                    u1, u2, mn, mx = _fold(v, shq, u1, u2, mn, mx)
                    v = yc[q] - (bq0 * fc0 + bq1 * fc1) - ec[q]
                    u1, u2, mn, mx = _fold(v, shq, u1, u2, mn, mx)
                    v = yd[q] - (bq0 * fd0 + bq1 * fd1) - ed[q]
                    u1, u2, mn, mx = _fold(v, shq, u1, u2, mn, mx)
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
                    s1_t[q], s2_t[q], lo_t[q], hi_t[q] = _fold(
                        v, sh_t[q], s1_t[q], s2_t[q], lo_t[q], hi_t[q]
                    )
            t += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _fold(v, sh, s1, s2, lo, hi):  # pragma: no cover - compiled
    """One residual ``v`` folded into a pixel's shifted sums, minimum and maximum."""
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


def frames_reference(
    A: scipy.sparse.spmatrix,
    Ct: np.ndarray,
    b: np.ndarray | None = None,
    ft: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> np.ndarray:
    """NumPy float64 twin of :func:`frames`, returning ``(n, npix)``."""
    acc = np.asarray(Ct, np.float64) @ A.toarray().T.astype(np.float64)
    if b is not None and ft is not None:
        acc = acc + np.asarray(ft, np.float64) @ np.asarray(b, np.float64).T
    if Y is None:
        return acc
    return np.asarray(Y, np.float64).reshape(len(acc), -1) - acc
