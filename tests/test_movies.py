"""Lazy movies against dense float64 brute force: indexing, dask graphs, dtypes, errors."""

from __future__ import annotations

import math
import pickle

import dask
import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import caiman_dask as cd
from caiman_dask.testing import assert_close_scaled, dense_reference, raise_if_dask_computes


def small_model(rng, dims=(9, 7), T=23, K=5, nb=2, frame_chunk=None, overlap=True):
    """A random model with heavily overlapping footprints and negative traces."""
    P = math.prod(dims)
    A = (
        scipy.sparse.random(P, K, density=0.3 if overlap else 0.05, random_state=rng, format="csc")
        * 3.0
    )
    C = rng.normal(size=(K, T)) * 5 - 2
    b = rng.normal(size=(P, nb)) if nb else None
    f = rng.normal(size=(nb, T)) if nb else None
    Y = (rng.normal(size=(T, *dims)) * 10 + 100).astype(np.float32)
    return cd.from_arrays(
        A,
        C,
        b=b,
        f=f,
        Y=Y,
        dims=dims,
        idx_components=[0, 2] if K >= 3 else None,
        idx_components_bad=[1, 3, 4] if K >= 5 else None,
        frame_chunk=frame_chunk,
    )


KINDS = ["rcm", "rcb", "residuals"]


def build(model, kind, components="all"):
    if kind == "rcm":
        return cd.rcm(model, components)
    if kind == "rcb":
        return cd.rcb(model)
    return cd.residuals(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", [(9, 7), (5, 4, 3)])
@pytest.mark.parametrize("frame_chunk", [None, 1, 5])
def test_data_matches_dense(rng, kind, dims, frame_chunk):
    m = small_model(rng, dims=dims, frame_chunk=frame_chunk)
    mv = build(m, kind)
    ref = dense_reference(m, kind)
    got = mv.data.compute()
    assert got.shape == ref.shape == mv.shape
    assert got.dtype == mv.dtype == np.float64
    assert_close_scaled(got, ref, rtol=1e-12)
    assert_close_scaled(mv[...], ref, rtol=1e-12)
    if frame_chunk:
        assert mv.data.chunks[0][0] == frame_chunk


_SHARED: dict = {}


def _shared_movies():
    if not _SHARED:
        m = small_model(np.random.default_rng(7))
        _SHARED.update({k: (build(m, k), dense_reference(m, k)) for k in KINDS})
    return _SHARED


index_strategy = st.one_of(
    st.integers(-23, 22),
    st.slices(23),
    st.lists(st.integers(-23, 22), min_size=0, max_size=6).map(lambda x: np.array(x, np.int64)),
    st.lists(st.integers(-23, 22), min_size=0, max_size=4),
)
spatial_strategy = st.one_of(st.just(slice(None)), st.integers(-7, 6), st.slices(7))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tkey=index_strategy,
    ikey=st.one_of(st.just(slice(None)), st.integers(-9, 8), st.slices(9)),
    jkey=spatial_strategy,
    kind=st.sampled_from(KINDS),
    ellipsis=st.booleans(),
)
def test_getitem_matches_numpy(tkey, ikey, jkey, kind, ellipsis):
    mv, ref = _shared_movies()[kind]
    key = (tkey, Ellipsis, jkey) if ellipsis else (tkey, ikey, jkey)
    expected = ref[key]
    got = mv[key]
    assert got.shape == expected.shape
    if got.ndim:
        assert got.flags.c_contiguous
    assert_close_scaled(got, expected, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    chunk=st.integers(1, 30),
    T=st.integers(1, 30),
    K=st.integers(0, 6),
    nb=st.integers(1, 4),
    three_d=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunking_does_not_change_values(chunk, T, K, nb, three_d, seed):
    rng = np.random.default_rng(seed)
    dims = (4, 3, 2) if three_d else (6, 5)
    m = small_model(rng, dims=dims, T=T, K=K, nb=nb, frame_chunk=chunk)
    with pytest.warns(cd.EmptyComponentsWarning) if K == 0 else _nullcontext():
        r = cd.rcm(m)
    assert_close_scaled(r.data.compute(), dense_reference(m, "rcm"), rtol=1e-12)
    assert_close_scaled(cd.residuals(m).data.compute(), dense_reference(m, "residuals"), rtol=1e-12)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_fancy_spatial_index_and_boolean_time(rng):
    m = small_model(rng)
    ref = dense_reference(m, "residuals")
    res = cd.residuals(m)
    mask = np.zeros(m.T, bool)
    mask[[1, 4, 20]] = True
    assert_close_scaled(res[mask], ref[mask])
    assert_close_scaled(res[[3, 1, 3], [0, 2, 4], [1, 1, 6]], ref[[3, 1, 3], [0, 2, 4], [1, 1, 6]])
    assert_close_scaled(res[2:9, [0, 5]], ref[2:9, [0, 5]])
    assert np.ndim(res[3, 4, 5]) == 0
    assert_close_scaled(res[3, 4, 5], ref[3, 4, 5])


@pytest.mark.parametrize("kind", KINDS)
def test_index_errors_like_numpy(rng, kind):
    m = small_model(rng)
    mv = build(m, kind)
    ref = dense_reference(m, kind)
    for key in [23, -24, (0, 9), (0, 0, 7), [0, 23], (0, 0, 0, 0)]:
        with pytest.raises(IndexError):
            ref[key]
        with pytest.raises(IndexError):
            mv[key]
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 23"):
        mv[23]
    with pytest.raises(IndexError, match="newaxis"):
        mv[None]
    with pytest.raises(IndexError):
        mv[1.5]


def test_building_computes_nothing_and_names_are_deterministic(rng):
    m = small_model(rng)
    with raise_if_dask_computes():
        a = [cd.rcm(m, "good").data, cd.rcb(m).data, cd.residuals(m).data]
        b = [cd.rcm(m, "good").data, cd.rcb(m).data, cd.residuals(m).data]
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name
        assert set(x.__dask_graph__().keys()) == set(y.__dask_graph__().keys())
    assert len({x.name for x in a}) == 3
    assert cd.rcm(m, "good").data.name != cd.rcm(m, "bad").data.name
    assert cd.rcm(m, dtype=np.float32).data.name != cd.rcm(m).data.name


def test_graph_from_files_embeds_no_factor(tmp_path):
    m = cd.synthetic(dims=(40, 30), T=120, K=12, seed=3, path=tmp_path)
    for mv in (cd.rcm(m), cd.rcb(m), cd.residuals(m)):
        graph = dict(mv.data.__dask_graph__())
        blob = pickle.dumps(graph)
        # factors: C alone is 12 x 120 x 8 = 11.5 kB, Y is 576 kB
        assert len(blob) < 10_000, len(blob)
        for v in graph.values():
            for arr in _arrays_in(v):
                assert arr.nbytes < 1000, arr.shape


def _arrays_in(task):
    stack = [task]
    seen = 0
    while stack and seen < 10_000:
        seen += 1
        x = stack.pop()
        if isinstance(x, np.ndarray):
            yield x
        elif isinstance(x, tuple | list):
            stack.extend(x)
        elif hasattr(x, "args"):
            stack.extend(getattr(x, "args", ()))
            stack.extend(getattr(x, "kwargs", {}).values())
        elif hasattr(x, "value"):
            stack.append(x.value)


def test_frames_come_from_the_factors_not_dask(rng):
    m = small_model(rng)
    mv = cd.rcm(m)
    mv[0]  # load factors once
    with raise_if_dask_computes():
        mv[3]
        mv[2:9, 1:3]
        cd.residuals(m)[5]


@pytest.mark.parametrize("layout", ["C", "F", "pixel-major"])
def test_single_frames_shared_by_cores_match_dense(rng, tmp_path, monkeypatch, layout):
    import caiman_dask._frames as movies

    monkeypatch.setattr(movies, "CORES", 2)  # as on any multi-core machine
    calls, gathered = [], []

    def spy(out, *args):
        calls.append(args[-1])
        return residual_bands(out, *args)

    def gather_spy(z, y, pixels):
        gathered.append((pixels.start, pixels.stop))
        return gather(z, y, pixels)

    residual_bands, gather = movies.residual_bands, movies.gather_pixel_major
    monkeypatch.setattr(movies, "residual_bands", spy)
    monkeypatch.setattr(movies, "gather_pixel_major", gather_spy)
    dims, T, K = (181, 800), 4, 12  # 5 bands of 32768 pixels
    P = math.prod(dims)
    A = scipy.sparse.random(P, K, density=0.01, random_state=rng, format="csc")
    C, b, f = rng.normal(size=(K, T)), rng.normal(size=(P, 2)), rng.normal(size=(2, T))
    Y = (rng.normal(size=(T, *dims)) * 10 + 100).astype(np.float32)
    if layout == "F":  # a frame-major CaImAn memmap: each frame in Fortran pixel order
        path = tmp_path / f"y_d1_{dims[0]}_d2_{dims[1]}_d3_1_order_F_frames_{T}.mmap"
        np.stack([y.ravel(order="F") for y in Y]).tofile(path)
        m = cd.from_arrays(A, C, b=b, f=f, Y=path, dims=dims)
    elif layout == "pixel-major":  # CaImAn's order-C memmap (P, T), the one CNMF reads
        path = tmp_path / f"y_d1_{dims[0]}_d2_{dims[1]}_d3_1_order_C_frames_{T}.mmap"
        np.ascontiguousarray(Y.reshape(T, -1, order="F").T).tofile(path)
        m = cd.from_arrays(A, C, b=b, f=f, Y=path, dims=dims)
    else:
        m = cd.from_arrays(A, C, b=b, f=f, Y=Y, dims=dims)
    res, ref = cd.residuals(m), dense_reference(m, "residuals")
    for t in (0, 2, -1):
        assert_close_scaled(res[t], ref[t], rtol=1e-12)
    # each of the 3 frames: bands 0-1 on one core, 2-4 on the other
    assert sorted((r.start, r.stop) for r in calls) == [(0, 2)] * 3 + [(2, 5)] * 3
    # a pixel-major movie's frames are first gathered, half of the pixels by each core
    half = P // 2
    expect = [(0, half)] * 3 + [(half, P)] * 3 if layout == "pixel-major" else []
    assert sorted(gathered) == expect
    assert_close_scaled(res[1:3], ref[1:3], rtol=1e-12)  # as many frames as cores: by frame
    assert len(calls) == 6
    # the raw movie takes the same paths, with nothing subtracted: exactly Y
    raw = cd.raw(m)
    for key in (0, -1, slice(1, 3), (slice(None), slice(5, 20), slice(None, None, 3))):
        np.testing.assert_array_equal(raw[key], Y[key])
    np.testing.assert_array_equal(cd.raw(m, dtype=np.float64)[2], Y[2].astype(np.float64))


@pytest.mark.parametrize("dtype", [None, np.float64])
def test_raw_frames_of_an_integer_movie_are_exact(rng, dtype):
    dims, T = (40, 300), 6  # (TIFF movies are often uint16)
    Y = rng.integers(0, 60000, size=(T, *dims)).astype(np.uint16)
    P = math.prod(dims)
    A = scipy.sparse.random(P, 3, density=0.05, random_state=rng, format="csc")
    b, f = rng.normal(size=(P, 1)), rng.normal(size=(1, T))
    m = cd.from_arrays(A, rng.normal(size=(3, T)), b=b, f=f, Y=Y, dims=dims)
    raw = cd.raw(m, dtype=dtype)
    want = np.dtype(dtype or np.float32)
    assert raw.dtype == want and raw[0].dtype == want
    np.testing.assert_array_equal(raw[:], Y.astype(want))
    np.testing.assert_array_equal(raw[4, ::7], Y[4, ::7].astype(want))
    assert_close_scaled(cd.residuals(m)[1:4], dense_reference(m, "residuals")[1:4], rtol=1e-12)


def test_custom_traces(rng):
    m = small_model(rng)
    traces = rng.normal(size=(m.K, m.T))
    mv = cd.rcm(m, [4, 0], traces=traces)
    A = m.A.compute().todense()
    ref = np.reshape((A[:, [4, 0]] @ traces[[4, 0]]).T, (m.T, *m.dims), order="F")
    assert_close_scaled(mv[...], ref)
    assert_close_scaled(mv.data.compute(), ref)
    with pytest.raises(cd.ShapeMismatchError, match=r"\(5, 22\)"):
        cd.rcm(m, traces=traces[:, :-1])
    with pytest.raises(cd.OptionError, match="F_dff"):
        cd.rcm(m, traces="dff")
    with pytest.raises(cd.ComponentError, match="no F_dff"):
        cd.rcm(m, traces="F_dff")


@pytest.mark.parametrize("components", ["all", "good", "bad", [1, -1], slice(1, 4)])
def test_component_selections(rng, components):
    m = small_model(rng)
    idx = m.components(components)
    mask = np.zeros(m.K, bool)
    mask[idx] = True
    ref = dense_reference(m, "rcm", components)
    assert_close_scaled(cd.rcm(m, components)[...], ref)
    assert_close_scaled(cd.rcm(m, mask).data.compute(), dense_reference(m, "rcm", mask))


def test_empty_selection_is_zero_and_says_so(rng):
    m = small_model(rng)
    with pytest.warns(cd.EmptyComponentsWarning, match="exactly zero"):
        mv = cd.rcm(m, [])
    assert mv[3].shape == m.dims and not mv[3].any()
    assert not mv.data.compute().any()


def test_component_errors(rng):
    m = small_model(rng)
    with pytest.raises(cd.ComponentError, match=r"\[5\].*K=5"):
        cd.rcm(m, [0, 5])
    with pytest.raises(cd.ComponentError, match="'all', 'good', 'bad'"):
        cd.rcm(m, "best")
    with pytest.raises(cd.ComponentError, match="shape \\(5,\\)"):
        cd.rcm(m, np.ones(4, bool))
    with pytest.raises(cd.ComponentError, match="integers"):
        cd.rcm(m, [0.5])
    m2 = cd.from_arrays(np.ones((6, 2)), np.ones((2, 3)), dims=(2, 3))
    with pytest.raises(cd.ComponentError, match="evaluate_components"):
        cd.rcm(m2, "good")
    with pytest.raises(cd.ComponentError, match="movie Y"):
        cd.residuals(m2)
    with pytest.raises(cd.ComponentError, match="no background"):
        cd.rcb(m2)


def test_float32_factors_give_float32_movies(rng):
    P, K, T = 20, 3, 8
    A = scipy.sparse.random(P, K, density=0.4, random_state=rng, dtype=np.float32)
    C = rng.normal(size=(K, T)).astype(np.float32)
    m = cd.from_arrays(A, C, dims=(4, 5))
    assert cd.rcm(m).dtype == np.float32
    assert cd.rcm(m)[0].dtype == np.float32
    assert cd.rcm(m).data.dtype == np.float32
    assert cd.rcm(m, dtype=np.float64)[0].dtype == np.float64
    with pytest.raises(cd.OptionError, match="floating"):
        cd.rcm(m, dtype=np.int32)


def test_viewer_protocol(rng):
    m = small_model(rng)
    mv = cd.rcm(m)
    assert mv.shape == (23, 9, 7) and mv.ndim == 3 and len(mv) == 23
    assert mv.size == 23 * 63 and mv.dtype == np.float64
    ref = dense_reference(m, "rcm")
    assert isinstance(mv.min, float) and isinstance(mv.max, float)
    np.testing.assert_allclose([mv.min, mv.max], [ref.min(), ref.max()], rtol=1e-12)
    assert "rcm" in repr(mv)
    np.testing.assert_allclose(np.asarray(mv), ref, rtol=1e-12, atol=1e-12)


def test_threaded_scheduler_is_default_and_works_concurrently(rng):
    m = small_model(rng, frame_chunk=3)
    mv = cd.residuals(m)
    with dask.config.set(scheduler="threads"):
        got = mv.data.compute()
    assert_close_scaled(got, dense_reference(m, "residuals"))
