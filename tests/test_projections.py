"""cd.project and movie.min / movie.max: exact against CaImAn's references and brute force.

Tolerances: ``assert_close_scaled(rtol=1e-10)`` against the fixture references (float64
paths); ``rtol=1e-10`` against dense float64 brute force; CaImAn's correlation image of the
float32 movie Y is compared at 1e-6 (CaImAn computed it in float32).
"""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

import caiman_dask as cd
from caiman_dask._streaming import local_correlations_reference
from caiman_dask.testing import assert_close_scaled, dense_reference

from .conftest import MMAP_1P_C

STATS = ["mean", "std", "min", "max"]


def _movies_2p(m):
    return {
        "rcm": cd.rcm(m),
        "rcm_good": cd.rcm(m, "good"),
        "rcb": cd.rcb(m),
        "residual": cd.residuals(m),
        "Y": cd.raw(m),
    }


@pytest.mark.parametrize("name", ["rcm", "rcm_good", "rcb", "residual", "Y"])
def test_2p_projections_match_references(model_2p, refs_2p, name):
    mv = _movies_2p(model_2p)[name]
    imgs = cd.project(mv, STATS)
    for k in STATS:
        assert imgs[k].shape == (60, 80) and imgs[k].dtype == np.float64
        assert_close_scaled(imgs[k], refs_2p[f"{name}_proj_{k}"])
    assert mv.min == pytest.approx(refs_2p[f"{name}_proj_min"].min(), rel=1e-12)
    assert mv.max == pytest.approx(refs_2p[f"{name}_proj_max"].max(), rel=1e-12)


@pytest.mark.parametrize(
    ("name", "key", "tol"),
    [
        ("rcm", "correlation_image_rcm", 1e-10),
        ("rcb", "correlation_image_rcb", 1e-10),
        ("residual", "correlation_image_residual", 1e-10),
        ("Y", "correlation_image", 1e-6),
    ],
)
def test_2p_correlation_images(model_2p, refs_2p, name, key, tol):
    img = cd.project(_movies_2p(model_2p)[name], "corr")
    ref = refs_2p[key]
    np.testing.assert_array_equal(np.isnan(img), np.isnan(ref))
    np.testing.assert_allclose(img, ref, rtol=0, atol=tol, equal_nan=True)


def test_1p_projections(caiman_dir, refs_1p):
    m = cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=caiman_dir / MMAP_1P_C)
    rcb = cd.rcb(m, dtype=np.float64)
    res = cd.residuals(m, dtype=np.float64)
    # background and residual statistics in one pass over Y
    calls = _count_y_reads(m, lambda: cd.project([rcb, res], STATS))
    assert calls == len(m.Y.chunks[0])
    for name, mv in (("rcb", rcb), ("residual", res)):
        imgs = cd.project(mv, STATS)
        for k in STATS:
            assert_close_scaled(imgs[k], refs_1p[f"{name}_proj_{k}"])
    for name, key in (("rcb", "correlation_image_rcb"), ("residual", "correlation_image_residual")):
        img = cd.project(rcb if name == "rcb" else res, "corr")
        np.testing.assert_allclose(img, refs_1p[key], rtol=0, atol=1e-10, equal_nan=True)
    rcm = cd.rcm(m)  # float32 factors, projected in float64 from the stored values
    for k in STATS:
        assert_close_scaled(cd.project(rcm, k), refs_1p[f"rcm_proj_{k}"])
    np.testing.assert_allclose(
        cd.project(rcm, "corr"),
        refs_1p["correlation_image_rcm"],
        rtol=0,
        atol=1e-10,
        equal_nan=True,
    )


def _count_y_reads(model, fn):
    """How many Y chunks were read by the dask computations inside ``fn``."""
    from dask.callbacks import Callback

    name = model.Y.name
    seen = []

    def pretask(key, dsk, state):
        if isinstance(key, tuple) and key[0] == name:
            seen.append(key)

    with Callback(pretask=pretask):
        fn()
    return len(seen)


def test_residual_statistics_take_one_pass_and_are_cached(model_2p):
    cd.forget_statistics()  # (other tests may have computed the same movie's statistics)
    res = cd.residuals(model_2p)
    n_chunks = len(model_2p.Y.chunks[0])
    assert (
        _count_y_reads(model_2p, lambda: cd.project(res, ["mean", "std", "min", "max"])) == n_chunks
    )
    assert _count_y_reads(model_2p, lambda: (res.min, res.max, cd.project(res, "std"))) == 0
    # corr needs neighbour co-moments: one more pass, then everything is cached
    assert _count_y_reads(model_2p, lambda: cd.project(res, "corr")) == n_chunks
    assert _count_y_reads(model_2p, lambda: cd.project(res, [*STATS, "corr"])) == 0
    # statistics belong to what a movie is made of: a new movie built alike shares them
    again = cd.residuals(model_2p)
    assert _count_y_reads(model_2p, lambda: (again.min, cd.project(again, "corr"))) == 0


def test_windows(model_2p, rng):
    for mv in (cd.rcm(model_2p), cd.rcb(model_2p), cd.residuals(model_2p, frame_chunk=37)):
        full = mv[...].astype(np.float64)
        for frames in (
            slice(100, 300),
            slice(None, None, 7),
            rng.choice(400, 50),
            slice(-50, None),
        ):
            sub = full[frames]
            imgs = cd.project(mv, STATS, frames=frames)
            for k, ref in (
                ("mean", sub.mean(0)),
                ("std", sub.std(0)),
                ("min", sub.min(0)),
                ("max", sub.max(0)),
            ):
                assert_close_scaled(imgs[k], ref)
        with pytest.raises(cd.OptionError, match="selects no frames"):
            cd.project(mv, "mean", frames=slice(10, 10))
        with pytest.raises(cd.OptionError, match=r"out of range.*T=400"):
            cd.project(mv, "mean", frames=slice(1000, 5000))
        with pytest.raises(cd.OptionError, match=r"outside 0\.\.399"):
            cd.project(mv, "mean", frames=[0, 400])


def test_unknown_kind_lists_valid_ones(model_2p):
    with pytest.raises(
        cd.OptionError, match=r"'median' is not one of \['mean', 'std', 'min', 'max', 'corr'\]"
    ):
        cd.project(cd.rcm(model_2p), "median")
    with pytest.raises(cd.OptionError, match="takes caiman_dask movies"):
        cd.project(np.zeros((3, 4, 5)), "mean")


def test_empty_component_set(model_2p):
    with pytest.warns(cd.EmptyComponentsWarning):
        mv = cd.rcm(model_2p, [])
    imgs = cd.project(mv, [*STATS, "corr"])
    for k in STATS:
        assert not imgs[k].any()
    assert np.isnan(imgs["corr"]).all()
    assert mv.min == 0.0 and mv.max == 0.0


def _random_model(seed, dims, K, T, nb, triples):
    """Footprints with heavy overlap (pairs and triples share pixels), negative traces."""
    rng = np.random.default_rng(seed)
    P = math.prod(dims)
    A = np.zeros((P, K))
    for k in range(K):
        n = rng.integers(1, max(2, P // 3))
        A[rng.choice(P, n, replace=False), k] = rng.uniform(0.1, 2.0, n)
    if triples and K >= 3:
        shared = rng.choice(P, max(1, P // 4), replace=False)
        A[shared, :3] = rng.uniform(0.1, 2.0, (len(shared), 3))
    C = rng.normal(size=(K, T)) * 10 - 5
    b = rng.normal(size=(P, nb)) * 3
    f = rng.normal(size=(nb, T)) + 2
    Y = rng.normal(size=(T, *dims)).astype(np.float32) * 4 + 500
    return cd.from_arrays(
        scipy.sparse.csc_matrix(A),
        C,
        b=b,
        f=f,
        Y=Y,
        dims=dims,
        frame_chunk=int(rng.integers(1, T + 1)),
    )


def _brute(movie_dense, kinds):
    out = {
        "mean": movie_dense.mean(0),
        "std": movie_dense.std(0),
        "min": movie_dense.min(0),
        "max": movie_dense.max(0),
    }
    if "corr" in kinds:
        with np.errstate(invalid="ignore", divide="ignore"):
            out["corr"] = local_correlations_reference(movie_dense)
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    three_d=st.booleans(),
    K=st.integers(1, 6),
    T=st.integers(2, 40),
    nb=st.integers(1, 4),
    triples=st.booleans(),
    window=st.sampled_from([None, slice(1, None), slice(None, None, 2)]),
)
def test_exact_against_brute_force(seed, three_d, K, T, nb, triples, window):
    dims = (4, 3, 3) if three_d else (6, 5)
    m = _random_model(seed, dims, K, T, nb, triples)
    kinds = [*STATS, "corr"]
    for kind, mv in (("rcm", cd.rcm(m)), ("rcb", cd.rcb(m)), ("residuals", cd.residuals(m))):
        dense = dense_reference(m, kind)
        if window is not None:
            dense = dense[window]
        got = cd.project(mv, kinds, frames=window)
        ref = _brute(dense, kinds)
        for k in kinds:
            if k == "corr":
                np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(ref[k]))
                np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-9, equal_nan=True)
            else:
                assert_close_scaled(got[k], ref[k])


def test_min_max_of_ring_and_raw(caiman_dir, refs_1p):
    m = cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=caiman_dir / MMAP_1P_C)
    rcb = cd.rcb(m, dtype=np.float64)
    assert rcb.min == pytest.approx(refs_1p["rcb_proj_min"].min(), rel=1e-12)
    assert rcb.max == pytest.approx(refs_1p["rcb_proj_max"].max(), rel=1e-12)
    y = cd.raw(m)
    assert y.min == pytest.approx(refs_1p["Y_proj_min"].min(), rel=1e-12)


def test_projections_work_under_threads_and_sync(model_2p, refs_2p):
    for scheduler in ("sync", "threads"):
        with dask.config.set(scheduler=scheduler):
            res = cd.residuals(model_2p, frame_chunk=50)
            assert_close_scaled(cd.project(res, "std"), refs_2p["residual_proj_std"])


@pytest.mark.parametrize("dims", [(23, 17), (7, 6, 5)])
def test_residual_pass_in_the_files_own_order(tmp_path, dims):
    """Frame-major memmap blocks are reduced in Fortran pixel order, then reordered."""
    m = cd.synthetic(dims=dims, T=50, K=6, seed=9, path=tmp_path, frame_chunk=7)
    block = m.Y.to_delayed().ravel()[0].compute()
    assert not block.flags.c_contiguous  # the file's order is kept: the fast path is taken
    kinds = [*STATS, "corr"]
    got = cd.project(cd.residuals(m), kinds)
    ref = _brute(dense_reference(m, "residuals"), kinds)
    for k in kinds:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-9, equal_nan=True)
    # and what the generic (C-ordered frames) reduction gives over the same canonical blocks:
    # to rounding, with and without corr (the fused one-pass kernels)
    from caiman_dask._statistics import canonical_frames, stats_of_blocks
    from caiman_dask._streaming import finalize

    frames = canonical_frames(cd.residuals(m), corr=True)
    data = cd.residuals(m, frame_chunk=frames).data
    generic = finalize(dask.compute(stats_of_blocks(data, True))[0], kinds)
    cd.forget_statistics()
    fused = cd.project(cd.residuals(m), STATS)  # no corr: the fused kernel
    for k in STATS:
        assert_close_scaled(got[k], generic[k], rtol=1e-12)
        assert_close_scaled(fused[k], generic[k], rtol=1e-12)
    np.testing.assert_allclose(got["corr"], generic["corr"], rtol=0, atol=1e-12, equal_nan=True)


def test_residual_windows_stream_canonical_blocks_of_a_memmap(tmp_path, monkeypatch):
    """Windows of a memmap-backed residual take the fused pass, one task per canonical block
    of the window (whatever the chunks of Y), each a view of the file."""
    from dask.callbacks import Callback

    import caiman_dask._statistics as S

    monkeypatch.setattr(S, "FOLD_FRAMES", 16)
    m = cd.synthetic(dims=(21, 16), T=90, K=7, seed=4, path=tmp_path, frame_chunk=5)
    dense = dense_reference(m, "residuals")
    for window in (slice(None), slice(3, 77), slice(40, 41), slice(13, 90), slice(0, 12)):
        cd.forget_statistics()
        res = cd.residuals(m)
        tasks = []

        def pretask(key, dsk, state, tasks=tasks):
            if isinstance(key, str) and key.startswith("_residual_block_moments"):
                tasks.append(key)

        with Callback(pretask=pretask):
            got = cd.project(res, STATS, frames=window)
        ref = _brute(dense[window], STATS)
        for k in STATS:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-9)
        start, stop, _ = window.indices(90)
        assert len(tasks) == -(-(stop - start) // 16)
