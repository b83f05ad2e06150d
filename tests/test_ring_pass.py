"""The ring-model pass (issue 15): statistics of CNMF-E movies with the background computed once
per block, and the compiled frame path (``rcb[t]``, ``res[t]``, slices).

References are dense float64 brute force in CaImAn's own Fortran convention
(:func:`tests.test_ring_movies.dense_ring_reference`, dense ``D`` and ``U`` matrices), for
``ssub_B`` 1, 2, 3 (ragged edges included) and 3D frames, with ``Y`` as an in-memory array, a
CaImAn frame-major (order F) memmap and a pixel-major (order C) memmap.

Tolerances: float64 models ``assert_close_scaled(rtol=1e-10)`` (|a − e| ≤ 1e-10 (|e| + max|e|));
``std`` compared as a variance. float32 movies: the frames are float32 (rounding ~6e-8 relative
per term); the pass folds the residual in float64 from the float32 background, so its images
agree with the float32 frames' to 1e-5 of the largest term. The background's ``min`` / ``max``
are exactly the frames' own (``fl(b0 + z)`` is monotone in ``z``), in any dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import zarr

import caiman_dask as cd
from caiman_dask import _ring_pass, _statistics
from caiman_dask.testing import assert_close_scaled

from .test_ring_movies import dense_ring_reference

STATS = ["mean", "std", "min", "max"]
CASES = [((13, 17), 1), ((13, 17), 2), ((14, 16), 2), ((13, 17), 3), ((7, 8, 5), 2)]


def _model(dims, ssub, *, T=23, K=4, seed=0, y_dtype=np.float64, layout="array", tmp=None):
    rng = np.random.default_rng(seed)
    P = math.prod(dims)
    dds = tuple(-(-d // ssub) for d in dims)
    P_ds = math.prod(dds)
    A = scipy.sparse.random(P, K, density=0.25, random_state=rng, format="csc")
    C = rng.normal(size=(K, T)) * 4
    W = scipy.sparse.random(P_ds, P_ds, density=0.15, random_state=rng, format="csr") * 0.3
    b0 = rng.uniform(100, 200, size=P)
    Y = (rng.normal(size=(T, *dims)) * 5 + 150).astype(y_dtype)
    if layout != "array":  # a CaImAn memmap (float32): frame-major (F) or pixel-major (C)
        Y = Y.astype(np.float32)
        order = "F" if layout == "F" else "C"
        d3 = dims[2] if len(dims) == 3 else 1
        name = f"Yr_d1_{dims[0]}_d2_{dims[1]}_d3_{d3}_order_{order}_frames_{T}.mmap"
        Path(tmp).mkdir(parents=True, exist_ok=True)
        path = Path(tmp) / name
        Yr = np.stack([fr.ravel(order="F") for fr in Y], axis=1)  # (P, T)
        if order == "F":
            np.ascontiguousarray(Yr.T).tofile(path)  # frame after frame
        else:
            Yr.tofile(path)  # pixel after pixel
        Ymov = path
    else:
        Ymov = Y
    m = cd.from_arrays(A, C, W=W, b0=b0, Y=Ymov, dims=dims, frame_chunk=5)
    ref_B, ref_R = dense_ring_reference(A.toarray(), C, W.toarray(), b0, Y, dims, ssub)
    return m, A.toarray(), C, Y, ref_B, ref_R


def _images(frames: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(frames, np.float64)
    return {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}


def _close(got: dict, want: dict, rtol: float) -> None:
    for k in STATS:
        if k == "std":
            assert_close_scaled(got[k] ** 2, want[k] ** 2, rtol=rtol)
        else:
            assert_close_scaled(got[k], want[k], rtol=rtol)


@pytest.mark.parametrize(("dims", "ssub"), CASES)
@pytest.mark.parametrize("layout", ["array", "F", "C"])
def test_pass_matches_dense_reference(tmp_path, dims, ssub, layout):
    m, A, C, Y, ref_B, ref_R = _model(dims, ssub, layout=layout, tmp=tmp_path)
    AC = np.stack([(A @ C[:, t]).reshape(dims, order="F") for t in range(C.shape[1])])
    movies = {
        "rcb": (cd.rcb(m), ref_B),
        "res": (cd.residuals(m), ref_R),
        "raw-rcb": (cd.raw(m) - cd.rcb(m), Y - ref_B),
        "rcm+rcb": (cd.rcm(m) + cd.rcb(m), AC + ref_B),
        "-2rcb": (-2.0 * cd.rcb(m), -2.0 * ref_B),
    }
    for mv, _ in movies.values():
        assert _ring_pass.ring_coefficients(mv.description) is not None
    cd.forget_statistics()
    got = cd.project([mv for mv, _ in movies.values()], STATS)
    for (_, ref), g in zip(movies.values(), got, strict=True):
        _close(g, _images(ref), 1e-10)
    # a window, and each movie alone (its own pass) gives the same numbers
    cd.forget_statistics()
    win = cd.project(cd.residuals(m), STATS, frames=slice(3, 17))
    _close(win, _images(ref_R[3:17]), 1e-10)
    cd.forget_statistics()
    alone = cd.project(cd.rcb(m), STATS)
    for k in STATS:
        np.testing.assert_array_equal(alone[k], got[0][k])


@pytest.mark.parametrize(("dims", "ssub"), CASES)
def test_frames_match_dense_reference(tmp_path, dims, ssub):
    for layout in ("array", "F", "C"):
        m, _, _, _, ref_B, ref_R = _model(dims, ssub, layout=layout, tmp=tmp_path, seed=1)
        for mv, ref in ((cd.rcb(m), ref_B), (cd.residuals(m), ref_R)):
            assert_close_scaled(mv[...], ref)
            assert_close_scaled(mv[4], ref[4])
            assert_close_scaled(mv[[7, 2, 7]], ref[[7, 2, 7]])
            assert_close_scaled(mv.data.compute(), ref)
            # a frame does not depend on the frames computed with it
            np.testing.assert_array_equal(mv[4], mv[2:9][2])


def test_float32_background_extremes_are_the_frames_own(tmp_path):
    m, *_ = _model((30, 26), 2, T=40, y_dtype=np.float32, layout="F", tmp=tmp_path)
    rcb = cd.rcb(m, dtype=np.float32)
    frames = rcb[...]
    cd.forget_statistics()
    img = cd.project([rcb, 3.0 * rcb, -rcb], ["min", "max"])
    np.testing.assert_array_equal(img[0]["min"], frames.min(0))
    np.testing.assert_array_equal(img[0]["max"], frames.max(0))
    three = (3.0 * rcb)[...]
    np.testing.assert_array_equal(img[1]["min"], three.min(0))
    np.testing.assert_array_equal(img[2]["max"], (-rcb)[...].max(0))
    assert rcb.min == float(frames.min()) and rcb.max == float(frames.max())


def test_float32_residuals_within_rounding(tmp_path):
    m, *_, ref_R = _model((30, 26), 2, T=40, y_dtype=np.float32, layout="C", tmp=tmp_path)
    res = cd.residuals(m, dtype=np.float32)
    cd.forget_statistics()
    got = cd.project(res, STATS)
    frames = _images(res[...])
    scale = np.abs(res[...]).max() + 200.0  # the size of the terms (Y ~ 150, B ~ 150)
    for k in STATS:
        assert np.abs(got[k] - frames[k]).max() <= 1e-5 * scale, k
        assert np.abs(got[k] - _images(ref_R)[k]).max() <= 1e-5 * scale, k


def test_background_computed_once_per_block(monkeypatch, tmp_path):
    """The joint pass computes ``Z = W·X`` once per canonical block for every ring movie."""
    m, *_ = _model((20, 24), 2, T=50, layout="F", tmp=tmp_path)
    calls: list[int] = []
    real = _ring_pass.ring_z_own

    def counting(L, X):
        calls.append(X.shape[1])
        return real(L, X)

    monkeypatch.setattr(_ring_pass, "ring_z_own", counting)
    monkeypatch.setattr(_statistics, "RING_BLOCK_BYTES", 20 * 24 * 8 * 7)  # 7 frames
    cd.forget_statistics()
    cd.project([cd.rcb(m), cd.residuals(m), cd.raw(m) - cd.rcb(m)], STATS)
    assert sum(calls) == 50, "every frame's background once"
    assert sorted(calls) == [1] + [7] * 7  # (tasks finish in any order)


def test_accumulate_equals_project_bitwise(tmp_path):
    m, *_ = _model((20, 24), 3, T=47, layout="F", tmp=tmp_path, y_dtype=np.float32)
    for mv in (cd.residuals(m), cd.rcb(m), cd.raw(m) - cd.rcb(m)):
        cd.forget_statistics()
        want = cd.project(mv, STATS)
        acc = cd.accumulate(mv, STATS)
        for n in (5, 1, 13, 28):
            got = acc.send(n)
        for k in STATS:
            np.testing.assert_array_equal(got[k], want[k])


def test_model_without_components(tmp_path):
    rng = np.random.default_rng(3)
    dims, ssub, T = (12, 10), 2, 15
    P, P_ds = 120, 30
    A = scipy.sparse.csc_matrix((P, 0))
    C = np.zeros((0, T))
    W = scipy.sparse.random(P_ds, P_ds, density=0.2, random_state=rng, format="csr")
    b0 = rng.uniform(1, 2, P)
    Y = rng.normal(size=(T, *dims))
    m = cd.from_arrays(A, C, W=W, b0=b0, Y=Y, dims=dims)
    ref_B, ref_R = dense_ring_reference(np.zeros((P, 0)), C, W.toarray(), b0, Y, dims, ssub)
    cd.forget_statistics()
    got = cd.project([cd.rcb(m), cd.residuals(m)], STATS)
    _close(got[0], _images(ref_B), 1e-10)
    _close(got[1], _images(ref_R), 1e-10)


def test_nonfinite_movie_pixels_are_nan():
    rng = np.random.default_rng(5)
    dims, P, P_ds, T = (13, 17), 221, 63, 20
    A = scipy.sparse.random(P, 3, density=0.25, random_state=rng, format="csc")
    W = scipy.sparse.random(P_ds, P_ds, density=0.15, random_state=rng, format="csr")
    Y = rng.normal(size=(T, *dims))
    Y[4, 3, 5] = np.nan
    m = cd.from_arrays(A, rng.normal(size=(3, T)), W=W, b0=np.ones(P), Y=Y, dims=dims)
    cd.forget_statistics()
    with pytest.warns(cd.NaNWarning):
        img = cd.project([cd.residuals(m), cd.rcb(m)], STATS)
    res, rcb = img
    assert np.isnan(res["mean"][3, 5]) and np.isnan(res["min"][3, 5])
    bad = np.isnan(rcb["mean"])  # where the ring reads the NaN block
    assert bad.any() and not bad.all()
    for x in img:
        for k in STATS:
            np.testing.assert_array_equal(np.isnan(x[k]), np.isnan(x["mean"]))
    assert np.isnan(res["mean"]).sum() > 1  # (the ring spreads it to its neighbours)


@pytest.mark.parametrize("layout", ["array", "F", "C"])
def test_frames_shared_by_the_cores(monkeypatch, tmp_path, layout):
    """``rcb[t]``/``res[t]`` of few frames share their work between the cores (forced here on
    a small model): the same frames, bit for bit, as one thread computes them."""
    from caiman_dask import _frames

    m, *_, ref_B, ref_R = _model((31, 26), 2, T=12, layout=layout, tmp=tmp_path, seed=4)
    rcb, res = cd.rcb(m), cd.residuals(m)
    one = {name: [mv[t] for t in range(12)] for name, mv in (("rcb", rcb), ("res", res))}
    monkeypatch.setattr(_frames, "PARALLEL_NNZ", 0)
    monkeypatch.setattr(_frames, "CORES", 2)
    rcb2, res2 = cd.rcb(m), cd.residuals(m)  # (fresh engines)
    for name, mv, ref in (("rcb", rcb2, ref_B), ("res", res2, ref_R)):
        for t in range(12):
            got = mv[t]
            np.testing.assert_array_equal(got, one[name][t])
            assert_close_scaled(got, ref[t])


def test_export_computes_the_background_once(monkeypatch, tmp_path):
    """``cd.to_zarr`` of a ring model's ``rcb`` and ``residuals``: one ``W·X`` per write unit
    for both movies, and the stored frames are each movie's own blocks, bit for bit."""
    from caiman_dask import _frames, _ring

    m, *_ = _model((20, 24), 2, T=30, layout="F", tmp=tmp_path, seed=6)
    calls: list[int] = []
    real = _ring.ring_z_into

    def counting(L, X, Z, rows):
        calls.append(X.shape[1])
        return real(L, X, Z, rows)

    for module in (_frames, _ring):  # (every caller of the sparse product)
        monkeypatch.setattr(module, "ring_z_into", counting)
    out = cd.to_zarr(m, tmp_path / "e.zarr", movies=("rcb", "residuals"), projections=())
    assert sum(calls) == 30, "each frame's background once, for both movies"
    for module in (_frames, _ring):
        monkeypatch.setattr(module, "ring_z_into", real)
    for name, mv in (("rcb", cd.rcb(m)), ("residuals", cd.residuals(m))):
        stored = zarr.open_array(str(Path(out) / name / "0"), mode="r")[...]
        # the bytes each movie's own blocks give (its .data in the export's chunks)
        np.testing.assert_array_equal(stored, _own_blocks(m, name, out))
        assert_close_scaled(stored, mv[...])


@pytest.mark.parametrize(("dims", "ssub"), [((13, 17), 1), ((13, 17), 2), ((14, 16), 2)])
def test_frames_agree_whatever_the_movies_pixel_order(tmp_path, dims, ssub):
    """The same float32 movie in memory (C order), as a frame-major (F) and as a pixel-major
    memmap gives the same frames and images to rounding (the kernels work in the order the
    frames are stored in, so sums may add in another order: not bit for bit)."""
    got = {}
    for layout in ("array", "F", "C"):
        m, *_ = _model(dims, ssub, y_dtype=np.float32, layout=layout, tmp=tmp_path / layout)
        cd.forget_statistics()
        imgs = cd.project([cd.rcb(m), cd.residuals(m)], STATS)
        got[layout] = (cd.rcb(m)[...], cd.residuals(m)[...], imgs)
    for layout in ("F", "C"):
        for a, b in zip(got["array"][:2], got[layout][:2], strict=True):
            assert_close_scaled(b, a, rtol=1e-12)
        for ia, ib in zip(got["array"][2], got[layout][2], strict=True):
            _close(ib, ia, 1e-12)


def _own_blocks(m, name, store):
    """What a movie's own dask blocks give in the chunks an export of ``store`` used."""
    arr = zarr.open_array(str(Path(store) / name / "0"), mode="r")
    mv = {"rcb": cd.rcb, "residuals": cd.residuals}[name](m, frame_chunk=int(arr.chunks[0]))
    return mv.data.compute()
