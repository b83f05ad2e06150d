"""The hand-written SIMD routines against their plain twins (bitwise), the rule that chooses
between them, and the frame kernels' output under either choice (bitwise the same bytes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
import scipy.sparse
from numba.core import config
from numba.core.codegen import get_host_cpu_features

import caiman_dask._simd as simd
from caiman_dask._frame_kernels import frames, gather_pixel_major, residual_bands
from caiman_dask._simd import (
    _axpy8,
    _axpy8_plain,
    _transpose8,
    _transpose8_plain,
    target_has_masked_simd,
)
from caiman_dask.errors import OptionError

ROOT = Path(__file__).resolve().parents[1]


# -- each routine against its twin ------------------------------------------------------------


@numba.njit
def _axpy8_simd_call(o, oi, d, di, ck, m):  # pragma: no cover - compiled
    _axpy8(o, oi, d, di, ck, m)


@numba.njit
def _axpy8_plain_call(o, oi, d, di, ck, m):  # pragma: no cover - compiled
    _axpy8_plain(o, oi, d, di, ck, m)


@numba.njit
def _transpose8_simd_call(src, s0, ss, dst, d0, ds):  # pragma: no cover - compiled
    _transpose8(src, s0, ss, dst, d0, ds)


@numba.njit
def _transpose8_plain_call(src, s0, ss, dst, d0, ds):  # pragma: no cover - compiled
    _transpose8_plain(src, s0, ss, dst, d0, ds)


def _axpy8_numpy(o, oi, d, di, ck, m):
    """The reference: a multiply, then an add, in ``o``'s dtype (NumPy fuses nothing)."""
    k = max(0, min(m, 8))
    c = o.dtype.type(ck)
    o[oi : oi + k] = o[oi : oi + k] + d[di : di + k] * c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", range(-3, 21))
@pytest.mark.parametrize("place", ["inside", "at the end"])
def test_axpy8_twins_agree_bitwise(dtype, m, place):
    rng = np.random.default_rng(m + 100)
    n = 21  # an 8-lane vector at offset >= 14 reaches past the end (its masked-off lanes)
    k = max(0, min(m, 8))
    for oi, di in ((0, 0), (3, 5), (n - 8, 1)) if place == "inside" else ((n - k, n - k),):
        o0 = rng.normal(size=n).astype(dtype) * 100
        d = rng.normal(size=n).astype(dtype)
        for ck in (dtype(rng.normal()), float(rng.normal()), dtype(0.0)):  # a float64 ck too
            outs = []
            for f in (_axpy8_simd_call, _axpy8_plain_call, _axpy8_numpy):
                o = o0.copy()
                f(o, oi, d, di, ck, m)
                outs.append(o)
            ref = outs[2]
            assert outs[0].tobytes() == ref.tobytes(), f"SIMD, oi={oi} di={di} ck={ck!r}"
            assert outs[1].tobytes() == ref.tobytes(), f"plain, oi={oi} di={di} ck={ck!r}"
            assert (outs[0] != o0).any() or k == 0 or ck == 0  # (it did write)


def _transpose_source(rng, dtype, size):
    """Values of ``dtype`` that round in a float32 output: its extremes, large integers, floats
    below float32's resolution, float32 subnormals, signed zeros."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, size=size, endpoint=True, dtype=dt)
        x[:4] = [info.min, info.max, info.max - 1, 0]
        return x
    x = rng.normal(size=size) * 10.0 ** rng.integers(-45, 38, size=size)  # (< float32's max)
    x[:6] = [1 + 2.0**-30, -0.0, 1e-40, 3.4e38, 16777217.0, np.pi]
    return x.astype(dt)


@pytest.mark.parametrize("src_dtype", [np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("dst_dtype", [np.float32, np.float64, "same"])
@pytest.mark.parametrize(("s0", "ss", "d0", "ds"), [(0, 8, 0, 8), (3, 11, 5, 9), (17, 64, 2, 13)])
def test_transpose8_twins_agree_bitwise(src_dtype, dst_dtype, s0, ss, d0, ds):
    rng = np.random.default_rng(ss * 7 + ds)
    dst_dt = np.dtype(src_dtype if dst_dtype == "same" else dst_dtype)
    src = _transpose_source(rng, src_dtype, s0 + 7 * ss + 8 + 3)
    r, c = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    ref = np.full(d0 + 7 * ds + 8 + 3, 7, dst_dt)  # (7: untouched elements must stay)
    ref[d0 + c * ds + r] = src[s0 + r * ss + c].astype(dst_dt)  # NumPy rounds to nearest too
    for f in (_transpose8_simd_call, _transpose8_plain_call):
        dst = np.full_like(ref, 7)
        f(src, s0, ss, dst, d0, ds)
        assert dst.tobytes() == ref.tobytes(), f.__name__


# -- the choice ---------------------------------------------------------------------------------


def test_the_kernels_call_the_chosen_routines():
    assert simd.simd_enabled() is simd.SIMD
    assert (simd.axpy8 is _axpy8) is simd.SIMD
    assert (simd.axpy8 is _axpy8_plain) is not simd.SIMD
    assert (simd.transpose8 is _transpose8) is simd.SIMD
    assert (simd.transpose8 is _transpose8_plain) is not simd.SIMD
    assert simd.VARIANT.startswith("simd_" if simd.SIMD else "plain_")
    if os.environ.get("CAIMAN_DASK_SIMD") == "0":
        assert not simd.SIMD


@pytest.mark.parametrize(
    ("triple", "features", "expected"),
    [
        ("x86_64-unknown-linux-gnu", "+avx,+avx2,+fma", True),
        ("x86_64-unknown-linux-gnu", "+avx2,+avx512f", True),
        ("x86_64-pc-windows-msvc", "-avx2,+avx512f", True),
        ("x86_64-unknown-linux-gnu", "+sse2,+avx,-avx2", False),  # (Sandy / Ivy Bridge)
        ("x86_64-unknown-linux-gnu", "", False),  # NUMBA_CPU_NAME=generic
        ("arm64-apple-darwin23.0.0", "+neon,+fp-armv8", False),  # Apple Silicon
        ("aarch64-unknown-linux-gnu", "+neon,+sve,+sve2", False),  # Graviton 3 / 4
        ("aarch64-unknown-linux-gnu", "+neon,+avx2", False),
        ("i686-pc-linux-gnu", "+avx2", False),
    ],
)
def test_masked_simd_rule(triple, features, expected):
    assert target_has_masked_simd(triple, features) is expected


def test_the_environment_variable_overrides_the_cpu(monkeypatch):
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2")  # as NUMBA_CPU_FEATURES=+avx2
    monkeypatch.setenv("CAIMAN_DASK_SIMD", "0")
    assert simd._choose() is False
    monkeypatch.setenv("CAIMAN_DASK_SIMD", "1")
    assert simd._choose() is True
    monkeypatch.setenv("CAIMAN_DASK_SIMD", "")
    assert simd._choose() is llvm.get_process_triple().startswith("x86_64")
    monkeypatch.setattr(config, "CPU_FEATURES", "")  # NUMBA_CPU_NAME=generic: no AVX
    assert simd._choose() is False
    monkeypatch.delenv("CAIMAN_DASK_SIMD")
    assert simd._choose() is False
    monkeypatch.setenv("CAIMAN_DASK_SIMD", "off")
    with pytest.raises(OptionError, match=r"CAIMAN_DASK_SIMD='off' is not one of '0'.*'1'"):
        simd._choose()


# -- the frame kernels under either choice -------------------------------------------------------


def _blobs(rng, P, K):
    """CSC footprints of pixel runs of every length 1..40 (1, 2, 3+ pieces of 8, partial last
    ones), some crossing the 32768-pixel band edge, some overlapping."""
    A = scipy.sparse.lil_matrix((P, K))
    for k in range(K):
        for _ in range(4):
            n = int(rng.integers(1, 41))
            s = int(rng.integers(0, P - n)) if k % 3 else 32768 - n // 2
            A[s : s + n, k] = rng.uniform(0.1, 1.0, n)
    return A.tocsc()


def _pixel_major(Y: np.ndarray, T: int, t0: int) -> np.ndarray:
    """Frames of ``Y`` ``(n, h, w)`` as views of a pixel-major movie (a CaImAn order-C memmap)."""
    n, h, w = Y.shape
    Yr = np.zeros((h * w, T), Y.dtype)
    Yr[:, t0 : t0 + n] = Y.reshape(n, -1, order="F").T
    return Yr.reshape(w, h, T).transpose(2, 1, 0)[t0 : t0 + n]


def variant_outputs() -> dict[str, np.ndarray]:
    """Frames of fixed seeded inputs through every compiled path (model, residuals from C,
    Fortran and pixel-major movies of floats and integers, one band, the gather)."""
    rng = np.random.default_rng(20240917)
    n, h, w, K = 11, 181, 191, 12  # two bands, split mid-row; 8-frame blocks and a rest
    P = h * w
    A = _blobs(rng, P, K)
    Ct = rng.normal(size=(n, K)) * 5
    Ct[2, 3] = 0.0
    b = rng.normal(size=(P, 3))
    ft = rng.normal(size=(n, 3))
    Yf = (rng.normal(size=(n, h, w)) * 30 + 500).astype(np.float32)
    movies = {
        "f4": Yf,
        "u2": rng.integers(0, 65535, size=(n, h, w), endpoint=True).astype(np.uint16),
        "i2": rng.integers(-32768, 32767, size=(n, h, w), endpoint=True).astype(np.int16),
        "f8": Yf.astype(np.float64) * np.pi,
    }
    out: dict[str, np.ndarray] = {}
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).str[1:]
        for nb in (0, 2, 3):
            bb, fb = (b[:, :nb], ft[:, :nb]) if nb else (None, None)
            o = np.empty((n, P), dt)
            frames(o, A, Ct, bb, fb)
            out[f"model-{name}-nb{nb}"] = o
            o = np.empty((n, P), dt)
            frames(o, A, Ct, bb, fb, Yf.reshape(n, P))  # flat rows: frame by frame
            out[f"flat-{name}-nb{nb}"] = o
        for key, Y in movies.items():
            for layout, Yl in (
                ("C", Y),
                ("F", np.ascontiguousarray(Y.transpose(0, 2, 1)).transpose(0, 2, 1)),
                ("pixel-major", _pixel_major(Y, T=n + 3, t0=2)),
            ):
                o = np.empty((n, P), dt)
                frames(o, A, Ct, b, ft, Yl)
                out[f"res-{name}-{key}-{layout}"] = o
        o = np.zeros((n, P), dt)
        Yt = np.ascontiguousarray(Yf.transpose(0, 2, 1)).transpose(0, 2, 1)
        residual_bands(o, A, Ct, b[:, :2], ft[:, :2], Yt, range(1, 2))
        out[f"band1-{name}"] = o
    for key, Y in movies.items():
        z = np.zeros((n, w, h), Y.dtype)
        gather_pixel_major(z, _pixel_major(Y, T=n + 5, t0=4), range(5, P - 3))
        out[f"gather-{key}"] = z
    return out


@pytest.fixture(scope="module")
def in_process() -> dict[str, np.ndarray]:
    return variant_outputs()


def _run_variant(tmp_path: Path, env: dict[str, str]) -> tuple[bool, dict[str, np.ndarray]]:
    """:func:`variant_outputs` in a fresh process with ``env`` added: its choice, its arrays."""
    path = tmp_path / "frames.npz"
    code = (
        "import json, numpy as np\n"
        "from caiman_dask import _simd\n"
        "from tests.test_simd import variant_outputs\n"
        f"np.savez({str(path)!r}, **variant_outputs())\n"
        "print(json.dumps({'simd': _simd.SIMD}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(path) as z:
        return json.loads(r.stdout.splitlines()[-1])["simd"], {k: z[k] for k in z.files}


def _assert_same_bytes(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(ref)
    differ = [
        k for k in ref if got[k].dtype != ref[k].dtype or got[k].tobytes() != ref[k].tobytes()
    ]
    assert not differ, f"not bitwise equal: {differ}"


def test_frames_are_bitwise_the_same_with_the_other_choice(tmp_path, in_process):
    # the other variant in a subprocess: CAIMAN_DASK_SIMD=0 when this process runs the SIMD
    # routines, =1 (forced) when it runs the plain twins (e.g. in CI's CAIMAN_DASK_SIMD=0 run)
    other, got = _run_variant(tmp_path, {"CAIMAN_DASK_SIMD": "1" if not simd.SIMD else "0"})
    assert other is not simd.SIMD
    _assert_same_bytes(got, in_process)


def _host_has_avx2() -> bool:
    triple, features = llvm.get_process_triple(), get_host_cpu_features()
    return triple.startswith("x86_64") and "+avx2" in features.split(",")


@pytest.mark.slow
@pytest.mark.skipif(not _host_has_avx2(), reason="runs AVX2 code: needs an x86-64 AVX2 host")
def test_frames_are_bitwise_the_same_compiled_for_avx2_only(tmp_path, in_process):
    # the SIMD routines as an AVX2 machine without AVX-512 runs them (8 lanes = two ymm
    # registers, vmaskmovps / vmaskmovpd), whatever this host has beyond AVX2
    env = {"CAIMAN_DASK_SIMD": "", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx2"}
    chosen, got = _run_variant(tmp_path, env)
    assert chosen is True
    _assert_same_bytes(got, in_process)


# -- numba's on-disk cache keeps the two choices apart ---------------------------------------


_CACHE_PROBE = """
import json, numpy as np
from caiman_dask import _frame_kernels as fk
Yr = np.arange(24 * 9, dtype=np.float32).reshape(24, 9)  # a pixel-major movie: 9 frames
Y = Yr.reshape(6, 4, 9).transpose(2, 1, 0)  # its 4 x 6 frames, as views
assert fk.pixel_major(Y, 24)
z = np.zeros((9, 6, 4), np.float32)
fk.gather_pixel_major(z, Y, range(24))  # calls transpose8 (9 frames: one 8 x 8 block row)
assert (z.transpose(0, 2, 1) == Y).all()
s = fk._gather_pixel_major.stats
print(json.dumps({"hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}))
"""


@pytest.mark.slow
def test_the_disk_cache_is_kept_per_choice(tmp_path):
    # a kernel compiled with one choice, cached, must not be loaded by a process with the other:
    # numba's cache does not see which routine the kernel called
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def probe(choice: str) -> dict[str, int]:
        r = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE],
            cwd=ROOT,
            env={**env, "CAIMAN_DASK_SIMD": choice},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.splitlines()[-1])

    assert probe("0") == {"hits": 0, "misses": 1}  # compiled, cached
    assert probe("1") == {"hits": 0, "misses": 1}  # the other choice: compiled, not loaded
    assert probe("0") == {"hits": 1, "misses": 0}  # each choice from its own cache files
    assert probe("1") == {"hits": 1, "misses": 0}
