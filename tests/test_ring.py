"""Tests for ``caiman_dask._ring`` (CNMF-E ring-model background).

The hand-made references below work in CaImAn's Fortran pixel convention
(dense ``D`` and ``U`` built from the definition, frames flattened with
``order='F'``), while the implementation works in C order, so these tests also
check the Fortran -> C conversion of ``W`` and ``b0``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from caiman_dask._ring import (
    RingOperator,
    decimate,
    infer_ssub_B,
    prepare_ring,
    ring_background,
    ring_frames,
    upsample,
)

# --------------------------------------------------------------------------
# fixtures on disk
# --------------------------------------------------------------------------


def _fixture_dir() -> Path:
    env = os.environ.get("CAIMAN_DASK_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared/fixtures/caiman"


FIXTURES = _fixture_dir()
MMAP_1P = "memmap_d1_48_d2_64_d3_1_order_C_frames_400.mmap"
_NEEDED = ("cnmf_1p.hdf5", MMAP_1P, "refs_1p.npz")
_HAVE_FIXTURES = all((FIXTURES / name).is_file() for name in _NEEDED)


def _read_csc(group: object) -> sp.csc_matrix:
    return sp.csc_matrix(
        (group["data"][()], group["indices"][()], group["indptr"][()]),  # type: ignore[index]
        shape=tuple(int(s) for s in group["shape"][()]),  # type: ignore[index]
    )


@pytest.fixture(scope="module")
def cnmfe_1p() -> dict[str, object]:
    if not _HAVE_FIXTURES:
        pytest.skip(f"CaImAn 1p fixtures not found in {FIXTURES} (set CAIMAN_DASK_FIXTURES)")
    h5py = pytest.importorskip("h5py")
    with h5py.File(FIXTURES / "cnmf_1p.hdf5", "r") as f:
        A = _read_csc(f["estimates/A"])
        W = _read_csc(f["estimates/W"])
        C = f["estimates/C"][()]
        b0 = f["estimates/b0"][()]
        dims = tuple(int(d) for d in f["dims"][()])
    P = math.prod(dims)
    T = C.shape[1]
    Yr = np.memmap(FIXTURES / MMAP_1P, dtype=np.float32, mode="r", shape=(P, T), order="C")
    Y = np.asarray(Yr).T.reshape((T, *dims), order="F")
    AC = (A.toarray().astype(np.float64) @ C.astype(np.float64)).T.reshape((T, *dims), order="F")
    with np.load(FIXTURES / "refs_1p.npz") as refs:
        ref = {k: refs[k] for k in refs.files if k != "key_descriptions"}
    return {"W": W, "b0": b0, "dims": dims, "Y": Y, "AC": AC, "refs": ref}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_fixture_rcb_and_residual(cnmfe_1p: dict[str, object]) -> None:
    refs = cnmfe_1p["refs"]
    Y = cnmfe_1p["Y"]
    AC = cnmfe_1p["AC"]
    op = prepare_ring(cnmfe_1p["W"], cnmfe_1p["b0"], cnmfe_1p["dims"])
    assert isinstance(op, RingOperator)
    assert op.ssub_B == 2
    assert op.dims_ds == (24, 32)

    fi = refs["frame_indices"]
    B = ring_frames(op, Y[fi], AC[fi])
    assert B.dtype == np.float64 and B.flags.c_contiguous
    assert B.shape == (len(fi), *tuple(cnmfe_1p["dims"]))
    assert _rel_err(B, refs["rcb_at_frame_indices"]) < 1e-10

    t0, t1 = (int(v) for v in refs["slice_start_stop"])
    B_slice = ring_frames(op, Y[t0:t1], AC[t0:t1])
    assert _rel_err(B_slice, refs["rcb_frames_10_50"]) < 1e-10

    residual = Y[fi].astype(np.float64) - AC[fi] - B
    ref_res = refs["residual_at_frame_indices"]
    np.testing.assert_allclose(residual, ref_res, rtol=0, atol=1e-10 * np.abs(Y).max())

    # frame-lazy: a single frame gives exactly the same numbers as the block
    one = ring_frames(op, Y[t0 + 3 : t0 + 4], AC[t0 + 3 : t0 + 4])
    np.testing.assert_allclose(one[0], B_slice[3], rtol=1e-14, atol=0)


# --------------------------------------------------------------------------
# hand-made ring models against a dense Fortran-order reference
# --------------------------------------------------------------------------


def _dense_D_U(dims: tuple[int, ...], s: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense decimation D (P_ds, P) and upsampling U (P, P_ds), Fortran order."""
    dims_ds = tuple(math.ceil(d / s) for d in dims)
    P, P_ds = math.prod(dims), math.prod(dims_ds)
    D = np.zeros((P_ds, P))
    U = np.zeros((P, P_ds))
    for p in range(P):
        idx = np.unravel_index(p, dims, order="F")
        q = np.ravel_multi_index(tuple(i // s for i in idx), dims_ds, order="F")
        D[q, p] = 1.0
        U[p, q] = 1.0
    D /= D.sum(axis=1, keepdims=True)  # edge blocks average the pixels they have
    return D, U


def _reference_B(
    W_F: np.ndarray,
    b0_F: np.ndarray,
    dims: tuple[int, ...],
    s: int,
    Y: np.ndarray,
    AC: np.ndarray,
) -> np.ndarray:
    """CaImAn's formula, dense, in Fortran pixel order; frames (n, *dims) in/out."""
    D, U = _dense_D_U(dims, s)
    n = Y.shape[0]
    Yf = Y.reshape(n, -1, order="F").T.astype(np.float64)  # (P, n), Fortran pixels
    ACf = AC.reshape(n, -1, order="F").T.astype(np.float64)
    Bf = b0_F[:, None] + U @ (W_F @ (D @ Yf - D @ ACf - (D @ b0_F)[:, None]))
    return Bf.T.reshape((n, *dims), order="F")


def _random_model(
    rng: np.random.Generator, dims: tuple[int, ...], s: int, density: float = 0.2
) -> tuple[sp.csc_matrix, np.ndarray]:
    dims_ds = tuple(math.ceil(d / s) for d in dims)
    P_ds = math.prod(dims_ds)
    W = sp.random(P_ds, P_ds, density=density, random_state=rng, format="csc")
    W.data = rng.standard_normal(W.nnz) * 0.1
    b0 = rng.uniform(100.0, 200.0, size=math.prod(dims))
    return W, b0


CASES = [
    ((13, 17), 1),
    ((13, 17), 2),
    ((13, 17), 3),
    ((12, 9), 3),  # divisible on one axis, ragged on none/other
    ((7, 8, 5), 2),  # 3D, ragged on two axes
    ((6, 5, 4), 1),  # 3D, no downsampling
]


@pytest.mark.parametrize(("dims", "s"), CASES)
def test_ring_frames_matches_dense_fortran_reference(dims: tuple[int, ...], s: int) -> None:
    rng = np.random.default_rng(1234 + s + len(dims))
    W, b0 = _random_model(rng, dims, s)
    n = 5
    Y = rng.uniform(0, 500, size=(n, *dims)).astype(np.float32)
    AC = rng.normal(0, 30, size=(n, *dims))
    ref = _reference_B(W.toarray(), b0, dims, s, Y, AC)

    assert infer_ssub_B(W.shape, dims) == s
    for fmt in ("csc", "csr", "coo"):
        op = prepare_ring(W.asformat(fmt), b0, dims)
        assert op.ssub_B == s
        B = ring_frames(op, Y, AC)
        assert B.shape == (n, *dims)
        assert B.dtype == np.float64 and B.flags.c_contiguous
        np.testing.assert_allclose(B, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())

    # float32 operator: same numbers to float32 precision, float32 output
    op32 = prepare_ring(W, b0, dims, dtype=np.float32)
    B32 = ring_frames(op32, Y, AC)
    assert B32.dtype == np.float32
    np.testing.assert_allclose(B32, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize(("dims", "s"), CASES)
def test_compiled_background_matches_the_reference(dims: tuple[int, ...], s: int) -> None:
    """``ring_background`` (CaImAn's ``D·Y − (D·A)·C`` and the compiled kernels, in the
    frames' own pixel order) against ``ring_frames`` (``D·(Y − A·C)`` in NumPy, C order): the
    same background to rounding, for frames stored in C and in Fortran order."""
    rng = np.random.default_rng(99 + s + len(dims))
    W, b0 = _random_model(rng, dims, s)
    P, K, n = math.prod(dims), 4, 6
    A_f = sp.random(P, K, density=0.3, random_state=rng, format="csc")
    A_c = A_f.tocsr()[np.arange(P).reshape(dims, order="F").ravel()]  # rows in C order
    C = rng.normal(0, 20, size=(K, n))
    Y = rng.uniform(0, 500, size=(n, *dims))
    AC = (A_c @ C).T.reshape((n, *dims))
    op = prepare_ring(W, b0, dims, A=A_c)
    ref = ring_frames(op, Y, AC)
    rev = (0, *range(len(dims), 0, -1))
    Y_f = np.ascontiguousarray(Y.transpose(rev)).transpose(rev)  # Fortran-ordered frames
    assert not Y_f.flags.c_contiguous
    for frames in (Y, Y_f):
        B = ring_background(op, frames, C.T)
        assert B.shape == (n, *dims) and B.dtype == np.float64 and B.flags.c_contiguous
        np.testing.assert_allclose(B, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
        # a frame does not depend on the frames computed with it
        np.testing.assert_array_equal(ring_background(op, frames[2:3], C.T[2:3]), B[2:3])


@pytest.mark.parametrize(("dims", "s"), CASES)
def test_decimate_upsample_match_dense(dims: tuple[int, ...], s: int) -> None:
    rng = np.random.default_rng(7)
    D, U = _dense_D_U(dims, s)
    dims_ds = tuple(math.ceil(d / s) for d in dims)
    frames = rng.standard_normal((3, *dims))
    ds = decimate(frames, s, dims)
    ref_ds = (D @ frames.reshape(3, -1, order="F").T).T.reshape((3, *dims_ds), order="F")
    assert ds.shape == (3, *dims_ds) and ds.flags.c_contiguous
    np.testing.assert_allclose(ds, ref_ds, rtol=1e-13, atol=1e-13)
    # single frame (no leading axis)
    np.testing.assert_allclose(decimate(frames[1], s, dims), ref_ds[1], rtol=1e-13, atol=1e-13)

    z = rng.standard_normal((3, *dims_ds))
    up = upsample(z, s, dims)
    ref_up = (U @ z.reshape(3, -1, order="F").T).T.reshape((3, *dims), order="F")
    assert up.shape == (3, *dims) and up.flags.c_contiguous
    np.testing.assert_array_equal(up, ref_up)


@settings(max_examples=40, deadline=None)
@given(
    d1=st.integers(1, 11),
    d2=st.integers(1, 11),
    s=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_decimate_of_upsample_is_identity(d1: int, d2: int, s: int, seed: int) -> None:
    dims = (d1, d2)
    dims_ds = tuple(math.ceil(d / s) for d in dims)
    z = np.random.default_rng(seed).standard_normal((2, *dims_ds))
    np.testing.assert_allclose(decimate(upsample(z, s, dims), s, dims), z, rtol=1e-13, atol=1e-13)


def test_ring_frames_input_checks() -> None:
    rng = np.random.default_rng(0)
    dims = (13, 17)
    W, b0 = _random_model(rng, dims, 2)
    op = prepare_ring(W, b0, dims)
    Y = np.zeros((2, *dims))
    with pytest.raises(ValueError):
        ring_frames(op, Y, np.zeros((3, *dims)))
    with pytest.raises(ValueError):
        ring_frames(op, Y[0], Y[0])
    with pytest.raises(ValueError):
        prepare_ring(W, b0[:-1], dims)


# --------------------------------------------------------------------------
# bad W shapes
# --------------------------------------------------------------------------


def test_bad_W_shape_raises() -> None:
    dims = (48, 64)
    P = math.prod(dims)
    for bad in [(700, 700), (769, 769), (768, 767)]:
        with pytest.raises(ValueError) as exc:
            infer_ssub_B(bad, dims)
        msg = str(exc.value)
        assert str(bad) in msg and str(dims) in msg
        if bad[0] == bad[1]:
            # names the sizes that would fit
            assert "768" in msg and str(P) in msg
        with pytest.raises(ValueError):
            prepare_ring(sp.csc_matrix(bad), np.zeros(P), dims)
    assert infer_ssub_B((768, 768), dims) == 2
    assert infer_ssub_B((P, P), dims) == 1
    assert infer_ssub_B((5 * 6, 5 * 6), (13, 17)) == 3
    assert infer_ssub_B((4 * 4 * 3, 4 * 4 * 3), (7, 8, 5)) == 2
