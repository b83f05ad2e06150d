"""CNMF-E ring background and residual movies: CaImAn fixture and hand-made dense references.

Tolerance: ``assert_close_scaled(rtol=1e-10)`` on float64 paths (|a − e| ≤ 1e-10 (|e| + max|e|)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse

import caiman_dask as cd
from caiman_dask.testing import assert_close_scaled, raise_if_dask_computes

from .conftest import MMAP_1P_C


@pytest.fixture(scope="module")
def model_1p(caiman_dir):
    return cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=caiman_dir / MMAP_1P_C)


@pytest.mark.parametrize("name", ["rcb", "residual"])
def test_1p_frames_match_caiman_float64(model_1p, refs_1p, name):
    mv = (cd.rcb if name == "rcb" else cd.residuals)(model_1p, dtype=np.float64)
    fi = refs_1p["frame_indices"]
    assert_close_scaled(mv[fi], refs_1p[f"{name}_at_frame_indices"])
    ref = refs_1p[f"{name}_frames_10_50"]
    assert_close_scaled(mv[10:50], ref)
    assert_close_scaled(mv[10:50, 3:40:3, -5:], ref[:, 3:40:3, -5:])
    assert_close_scaled(mv.data[10:50].compute(), ref)


def test_1p_default_dtype_is_float32(model_1p, refs_1p):
    mv = cd.rcb(model_1p)
    assert mv.dtype == np.float32 and mv[0].dtype == np.float32
    ref = refs_1p["rcb_frames_10_50"]
    # CaImAn's own float32 path differs from float64 by up to 2.4e-4 on values ~1.2e3-1.8e3
    np.testing.assert_allclose(mv[10:50], ref, rtol=0, atol=1e-3)


def test_ring_frame_needs_only_its_frame(model_1p):
    mv = cd.rcb(model_1p, dtype=np.float64)
    mv[0]
    with raise_if_dask_computes():
        a = mv[123]
    assert_close_scaled(a, mv[120:130][3])


def dense_ring_reference(A, C, W, b0, Y, dims, ssub):
    """CaImAn's definition in its own Fortran convention with dense D and U matrices."""
    P = math.prod(dims)
    dds = tuple(-(-d // ssub) for d in dims)
    P_ds = math.prod(dds)
    D = np.zeros((P_ds, P))
    U = np.zeros((P, P_ds))
    for p in range(P):
        idx = np.unravel_index(p, dims, order="F")
        q = np.ravel_multi_index(tuple(i // ssub for i in idx), dds, order="F")
        U[p, q] = 1.0
        D[q, p] = 1.0
    D /= D.sum(axis=1, keepdims=True)
    T = C.shape[1]
    Yr = np.stack([fr.ravel(order="F") for fr in Y], axis=1).astype(np.float64)
    AC = A @ C
    B = b0[:, None] + U @ (W @ (D @ Yr - D @ AC - (D @ b0)[:, None]))
    to_frames = lambda X: np.reshape(X.T, (T, *dims), order="F")  # noqa: E731
    return to_frames(B), to_frames(Yr - AC - B)


@pytest.mark.parametrize(
    ("dims", "ssub"), [((13, 17), 1), ((13, 17), 2), ((13, 17), 3), ((7, 8, 5), 2)]
)
def test_hand_made_ring_model(rng, dims, ssub):
    P = math.prod(dims)
    K, T = 4, 9
    dds = tuple(-(-d // ssub) for d in dims)
    P_ds = math.prod(dds)
    A = scipy.sparse.random(P, K, density=0.2, random_state=rng, format="csc")
    C = rng.normal(size=(K, T)) * 4
    W = scipy.sparse.random(P_ds, P_ds, density=0.1, random_state=rng, format="csr") * 0.3
    b0 = rng.uniform(100, 200, size=P)
    Y = rng.normal(size=(T, *dims)).astype(np.float32) * 5 + 150
    m = cd.from_arrays(A, C, W=W, b0=b0, Y=Y, dims=dims, frame_chunk=4)
    assert m.background == "ring"
    B_ref, R_ref = dense_ring_reference(A.toarray(), C, W.toarray(), b0, Y, dims, ssub)
    rcb, res = cd.rcb(m), cd.residuals(m)
    assert rcb.dtype == np.float64
    for mv, ref in ((rcb, B_ref), (res, R_ref)):
        assert_close_scaled(mv[...], ref)
        assert_close_scaled(mv.data.compute(), ref)
        assert_close_scaled(mv[[5, 1]], ref[[5, 1]])
        assert_close_scaled(mv[2:7, 1:-1:2], ref[2:7, 1:-1:2])


def test_bad_ring_shapes(rng):
    A = scipy.sparse.random(13 * 17, 2, density=0.2, random_state=rng)
    C = rng.normal(size=(2, 5))
    Y = np.zeros((5, 13, 17), np.float32)
    with pytest.raises(cd.ShapeMismatchError, match=r"W shape \(50, 50\) fits no integer ssub_B"):
        cd.from_arrays(A, C, W=scipy.sparse.eye(50), b0=np.zeros(221), Y=Y, dims=(13, 17))
    with pytest.raises(cd.ShapeMismatchError, match=r"b0 has shape \(220,\)"):
        cd.from_arrays(A, C, W=scipy.sparse.eye(63), b0=np.zeros(220), Y=Y, dims=(13, 17))
    with pytest.raises(cd.ShapeMismatchError, match="both W and b0"):
        cd.from_arrays(A, C, W=scipy.sparse.eye(63), Y=Y, dims=(13, 17))
    m = cd.from_arrays(A, C, W=scipy.sparse.eye(63), b0=np.zeros(221), dims=(13, 17))
    with pytest.raises(cd.ComponentError, match="needs the movie Y"):
        cd.rcb(m)
