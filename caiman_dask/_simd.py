"""The frame kernels' hand-written SIMD routines, each beside a plain numba twin.

Two routines sit in every frame's hot path (:mod:`caiman_dask._frame_kernels`):

- :func:`_axpy8`: ``o[oi + k] += d[di + k] * ck`` for ``k < min(m, 8)``, as masked vector loads
  and stores (a footprint run's last, partial vector costs no branch);
- :func:`_transpose8`: one 8 × 8 block transposed through a shuffle network, converted to the
  output's dtype on whole vectors.

Both are written in LLVM IR (numba ``@intrinsic``), because numba's scalar loops emit neither
masked memory operations nor shuffles. Their twins, :func:`_axpy8_plain` and
:func:`_transpose8_plain`, are plain loops doing the same arithmetic in the same order (a
multiply, then an add: never fused), so either choice gives bitwise the same frames.

The kernels call :data:`axpy8` and :data:`transpose8`, chosen once, at import:

- the plain twins when the environment variable ``CAIMAN_DASK_SIMD`` is ``0``;
- the SIMD routines when it is ``1`` (correct on any target LLVM compiles for; for testing them
  where the automatic rule would not choose them);
- otherwise (unset or empty) the SIMD routines if numba compiles for x86-64 with AVX2 or
  AVX-512F, the plain twins on every other target. The target is what numba's code generator
  uses: ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when set, else
  :func:`llvmlite.binding.get_host_cpu_features` (less AVX under ``NUMBA_ENABLE_AVX=0``).

Why that rule: LLVM lowers ``llvm.masked.load`` / ``llvm.masked.store`` of 8 lanes to single
instructions only where the machine has masked memory operations: ``vmaskmovpd`` / ``vmaskmovps``
with AVX, mask registers with AVX-512F (checked by compiling :func:`_axpy8`'s IR with this
llvmlite for ``haswell`` and ``skylake-avx512``: branch-free). Elsewhere it splits each into one
conditional scalar access per lane: for ``apple-m1`` (NEON), ``neoverse-v1`` / ``-v2`` (SVE:
fixed-width masked operations are not lowered to it) and baseline x86-64 (SSE2), the same IR
became ~45 branches on the run's length, where the plain loop has one. The shuffles of
:func:`_transpose8` would lower well on NEON, but one switch for both routines keeps the
combinations to two, both tested. Apple Silicon and other ARM machines therefore run the plain
twins.

Numba's on-disk cache does not see through calls: a cached kernel keeps the routine it was
compiled with, whatever :data:`axpy8` is bound to later. Kernels calling these routines
(directly or not) are therefore compiled with :func:`njit_per_variant`, whose cache files are
named after :data:`VARIANT`: the choice and a digest of this file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm
import numba
from llvmlite import ir
from numba.core import cgutils, config, types
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from .errors import OptionError

__all__ = [
    "SIMD",
    "VARIANT",
    "axpy8",
    "njit_per_variant",
    "simd_enabled",
    "target_has_masked_simd",
    "transpose8",
]

#: The environment variable that turns the SIMD routines off (``0``) or on (``1``).
ENV = "CAIMAN_DASK_SIMD"


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
    dtype; ``ck`` is taken in that dtype; offsets in elements.
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
def _axpy8_plain(o, oi, d, di, ck, m):  # pragma: no cover - compiled
    """:func:`_axpy8` as a scalar loop: ``o[oi + k] = o[oi + k] + d[di + k] * ck`` for
    ``k < min(m, 8)``, ``ck`` taken in ``o``'s dtype first (as :func:`_axpy8` does). Numba
    fuses no multiply-add without ``fastmath``: each lane rounds exactly as the vector one."""
    c = o.dtype.type(ck)
    for k in range(min(m, 8)):
        o[oi + k] = o[oi + k] + d[di + k] * c


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


@numba.njit(cache=True, nogil=True, inline="always")
def _transpose8_plain(src, s0, ss, dst, d0, ds):  # pragma: no cover - compiled
    """:func:`_transpose8` as a double loop: ``dst[d0 + c * ds + r] = src[s0 + r * ss + c]``
    for ``r, c < 8``, each element converted to ``dst``'s dtype as it is stored (the same
    conversions, one element at a time: integers rounded to the nearest float, floats widened
    or rounded to nearest)."""
    for c in range(8):
        for r in range(8):
            dst[d0 + c * ds + r] = src[s0 + r * ss + c]


def target_has_masked_simd(triple: str, features: str) -> bool:
    """Whether LLVM lowers :func:`_axpy8`'s 8-lane masked loads and stores to single
    instructions on this target: x86-64 with AVX2 or AVX-512F (see the module's docstring).

    Parameters
    ----------
    triple
        The LLVM target triple (``"x86_64-unknown-linux-gnu"``, ``"arm64-apple-darwin23.0.0"``).
    features
        LLVM's feature string, ``"+avx2,-avx512f,..."`` (only ``+`` entries count).

    Examples
    --------
    >>> target_has_masked_simd("x86_64-unknown-linux-gnu", "+sse2,+avx,+avx2")
    True
    >>> target_has_masked_simd("x86_64-unknown-linux-gnu", "+sse2,-avx2")
    False
    >>> target_has_masked_simd("arm64-apple-darwin23.0.0", "+neon")
    False
    """
    on = {f[1:] for f in features.split(",") if f.startswith("+")}
    return triple.startswith(("x86_64", "amd64")) and bool(on & {"avx2", "avx512f"})


def _numba_target() -> tuple[str, str]:
    """The triple and CPU features numba's code generator compiles for."""
    # (numba's config sets its attributes from the environment at run time: mypy sees none)
    features: str | None = config.CPU_FEATURES  # type: ignore[attr-defined]
    if features is None:  # else NUMBA_CPU_FEATURES, or "" for NUMBA_CPU_NAME=generic
        features = get_host_cpu_features()
    return llvm.get_process_triple(), features


def _choose() -> bool:
    """Whether the kernels take the SIMD routines (see the module's docstring)."""
    value = os.environ.get(ENV, "")
    if value == "0":
        return False
    if value == "1":
        return True
    if value == "":
        return target_has_masked_simd(*_numba_target())
    raise OptionError(
        f"environment variable {ENV}={value!r} is not one of '0' (the plain loops), "
        f"'1' (the SIMD routines) or unset / '' (decided from the CPU); "
        f"unset it or set it to one of those"
    )


#: Whether the kernels call the SIMD routines (``True``) or their plain twins (``False``).
SIMD: bool = _choose()

#: The routines the kernels call (see the module's docstring).
axpy8 = _axpy8 if SIMD else _axpy8_plain
transpose8 = _transpose8 if SIMD else _transpose8_plain

#: What :func:`njit_per_variant` names cache files after: the choice and this file's digest
#: (numba only watches the caller's own file, and this one's routines get compiled into it).
VARIANT = "{}_{}".format(
    "simd" if SIMD else "plain", hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
)


def simd_enabled() -> bool:
    """Whether the frame kernels run the hand-written SIMD routines (else their plain twins).

    Examples
    --------
    >>> simd_enabled() is SIMD
    True
    """
    return SIMD


def njit_per_variant(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, nogil=True, **options)`` for a kernel calling :data:`axpy8` or
    :data:`transpose8`, directly or through another kernel, with its on-disk cache kept apart
    per :data:`VARIANT`.

    Numba looks a cached kernel up by its file, qualified name and line (plus its signature
    and the CPU), and bakes the callees' code in: a process with ``CAIMAN_DASK_SIMD=0`` would
    otherwise load a kernel compiled with the SIMD routines, or the reverse. The cache file
    is named when the dispatcher is made, from the function's ``__qualname__``; that is set
    to ``name.VARIANT`` for that moment only, and restored (error messages, pickling and the
    compiled symbols see the real name).
    """

    def wrap(fn: Callable[..., Any]) -> Any:  # (a numba dispatcher, untyped as numba.njit's)
        name = fn.__qualname__
        fn.__qualname__ = f"{name}.{VARIANT}"
        try:
            kernel = numba.njit(cache=True, nogil=True, **options)(fn)
        finally:
            fn.__qualname__ = name
        kernel.__qualname__ = name  # (the dispatcher copied the tagged name)
        return kernel

    return wrap
