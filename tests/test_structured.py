"""Tests of :mod:`caiman_dask._structured` against dense float64 brute force.

Every statistic is compared with the same statistic of the explicitly formed movie
``M = dense(A) @ C[:, t0:t1]`` (float64). Tolerance: ``|got - ref| <= RTOL * max|ref|``
with ``RTOL = 1e-10`` (elementwise, relative to the largest absolute value of the
reference image); NaN positions must match exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caiman_dask import _structured as cs
from caiman_dask.errors import CaimanDaskError, ShapeMismatchError

RTOL = 1e-10

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------
# problem generators and brute force
# --------------------------------------------------------------------------


def _random_footprints(
    rng: np.random.Generator, dims: tuple[int, ...], n_comp: int, *, n_empty_cols: int = 0
) -> sp.csc_matrix:
    """Small boxy footprints; components come in clusters of 1-3 sharing pixels."""
    n_pix = int(np.prod(dims))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    grid = np.arange(n_pix).reshape(dims)
    k = 0
    while k < n_comp:
        centre = [int(rng.integers(0, d)) for d in dims]
        for _ in range(min(int(rng.integers(1, 4)), n_comp - k)):
            if k >= n_comp - n_empty_cols:
                k += 1  # a component without pixels
                continue
            lo = [max(0, c - int(rng.integers(0, 3))) for c in centre]
            hi = [min(d, c + int(rng.integers(1, 4))) for c, d in zip(centre, dims, strict=True)]
            pix = grid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].reshape(-1)
            rows.append(pix)
            cols.append(np.full(pix.size, k))
            vals.append(rng.uniform(0.1, 1.0, pix.size))
            k += 1
    if rows:
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0)
    return sp.csc_matrix((v, (r, c)), shape=(n_pix, n_comp))


def _random_traces(rng: np.random.Generator, n_comp: int, n_frames: int) -> FloatArray:
    """Traces with negative baselines, spikes and noise."""
    base = rng.normal(-1.0, 0.5, size=(n_comp, 1))
    spikes = (rng.random((n_comp, n_frames)) < 0.1) * rng.exponential(3.0, (n_comp, n_frames))
    return base + spikes + rng.normal(0.0, 0.4, (n_comp, n_frames))


def _random_dense_b(rng: np.random.Generator, n_pix: int, nb: int) -> FloatArray:
    """Dense background factor of any sign, with some zero entries and zero rows."""
    b = rng.normal(size=(n_pix, nb))
    b[rng.random((n_pix, nb)) < 0.2] = 0.0
    b[rng.random(n_pix) < 0.05] = 0.0
    return b


def _dense(A: object) -> FloatArray:
    if sp.issparse(A):
        return np.asarray(A.todense(), dtype=np.float64)  # type: ignore[attr-defined]
    return np.asarray(A, dtype=np.float64)


def _movie(A: object, C: np.ndarray, t0: int, t1: int | None) -> FloatArray:
    return _dense(A) @ np.asarray(C, dtype=np.float64)[:, t0:t1]


def _brute_cov(movie: FloatArray, dims: tuple[int, ...], offset: tuple[int, ...]) -> FloatArray:
    centred = movie - movie.mean(axis=1, keepdims=True)
    out = np.full(dims, np.nan)
    for x in np.ndindex(*dims):
        y = tuple(a + o for a, o in zip(x, offset, strict=True))
        if all(0 <= a < d for a, d in zip(y, dims, strict=True)):
            p = np.ravel_multi_index(x, dims)
            q = np.ravel_multi_index(y, dims)
            out[x] = np.mean(centred[p] * centred[q])
    return out


def _assert_close(got: np.ndarray, ref: np.ndarray, floor: float = 0.0) -> None:
    """``|got - ref| <= RTOL * max(max|ref|, floor)`` elementwise, NaNs at the same places."""
    assert got.shape == ref.shape
    assert got.dtype == np.float64
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    finite = ref[~nan]
    scale = max(float(np.abs(finite).max()) if finite.size else 0.0, floor)
    err = np.abs(got[~nan] - finite)
    assert np.all(err <= RTOL * scale), f"max abs error {err.max()} > {RTOL} * {scale}"


def _check_all(
    A: object,
    C: np.ndarray,
    t0: int = 0,
    t1: int | None = None,
    dims: tuple[int, ...] | None = None,
    offsets: tuple[tuple[int, ...], ...] = (),
    *,
    std_floor: bool = False,
) -> None:
    """Compare every statistic with brute force.

    ``std_floor=True`` measures the std error against ``max|M|`` instead of
    ``max std`` -- for movies whose std is identically 0, where the brute-force
    reference itself is pure rounding noise.
    """
    movie = _movie(A, C, t0, t1)
    floor = float(np.abs(movie).max()) if std_floor and movie.size else 0.0
    _assert_close(cs.structured_mean(A, C, t0, t1), movie.mean(axis=1))
    _assert_close(cs.structured_std(A, C, t0, t1), movie.std(axis=1), floor)
    lo, hi = cs.structured_min_max(A, C, t0, t1)
    _assert_close(lo, movie.min(axis=1))
    _assert_close(hi, movie.max(axis=1))
    if dims is not None and offsets:
        covs = cs.structured_cov_pairs(A, C, dims, offsets, t0, t1)
        assert set(covs) == set(offsets)
        for off in offsets:
            _assert_close(covs[off], _brute_cov(movie, dims, off))


OFFSETS_2D = ((1, 0), (0, 1), (1, 1), (1, -1))
OFFSETS_3D = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


@pytest.fixture
def hull_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every overlap group with ``|S| <= 4`` go through the convex-hull pruning."""
    monkeypatch.setattr(cs, "_HULL_MIN_PIXELS", 1)
    monkeypatch.setattr(cs, "_HULL_MIN_FRAMES", 8)
    yield


# --------------------------------------------------------------------------
# footprint_groups
# --------------------------------------------------------------------------


def test_footprint_groups_partition_and_weights() -> None:
    rng = np.random.default_rng(0)
    A = _random_footprints(rng, (9, 11), 25, n_empty_cols=2)
    dense = _dense(A)
    groups = cs.footprint_groups(A)
    assert (groups.n_pixels, groups.n_components) == A.shape

    seen = np.concatenate([groups.empty, groups.single_pixels, *groups.pixels])
    np.testing.assert_array_equal(np.sort(seen), np.arange(A.shape[0]))  # a partition

    np.testing.assert_array_equal(groups.empty, np.flatnonzero((dense != 0).sum(1) == 0))
    for p, k, a in zip(
        groups.single_pixels, groups.single_component, groups.single_weight, strict=True
    ):
        np.testing.assert_array_equal(np.flatnonzero(dense[p]), [k])
        assert dense[p, k] == a
    keys = [tuple(s) for s in groups.supports]
    assert len(set(keys)) == len(keys)  # distinct support sets
    assert groups.n_groups > 3 and groups.n_overlap_pixels > 10  # the problem has overlap
    for sup, pix, w in zip(groups.supports, groups.pixels, groups.weights, strict=True):
        assert sup.size >= 2
        for i, p in enumerate(pix):
            np.testing.assert_array_equal(np.flatnonzero(dense[p]), sup)
            np.testing.assert_array_equal(dense[p, sup], w[i])


def test_footprint_groups_ignores_explicit_zeros_and_keeps_input() -> None:
    A = sp.csr_matrix(
        (np.array([1.0, 0.0, 2.0, 3.0, 0.0]), np.array([0, 1, 1, 0, 2]), np.array([0, 2, 3, 5])),
        shape=(3, 3),
    )
    groups = cs.footprint_groups(A)
    assert A.nnz == 5  # the caller's matrix is not modified
    np.testing.assert_array_equal(groups.single_pixels, [0, 1, 2])
    np.testing.assert_array_equal(groups.single_component, [0, 1, 0])
    assert groups.n_groups == 0 and groups.empty.size == 0


def test_unique_rows_fallback_matches_key_path() -> None:
    rng = np.random.default_rng(1)
    idx = np.sort(rng.integers(0, 50, size=(200, 4)), axis=1)
    u_small, inv_small = cs._unique_rows(idx, 50)
    u_big, inv_big = cs._unique_rows(idx, 2**40)  # base-K keys would overflow int64
    np.testing.assert_array_equal(u_small, u_big)
    np.testing.assert_array_equal(inv_small, inv_big)
    np.testing.assert_array_equal(u_small[inv_small], idx)


# --------------------------------------------------------------------------
# statistics against brute force
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "dims", "n_comp", "n_frames", "t0", "t1"),
    [
        (100, (8, 9), 20, 60, 0, None),
        (101, (8, 9), 20, 60, 13, 41),
        (102, (7, 5), 12, 1, 0, None),  # T = 1
        (103, (9, 10), 30, 50, 49, 50),  # one-frame window
        (104, (5, 6, 4), 18, 40, 3, 35),  # 3D
        (105, (12, 13), 60, 120, 10, 110),  # crowded
    ],
)
def test_sparse_factor_matches_brute_force(
    seed: int, dims: tuple[int, ...], n_comp: int, n_frames: int, t0: int, t1: int | None
) -> None:
    rng = np.random.default_rng(seed)
    A = _random_footprints(rng, dims, n_comp, n_empty_cols=1)
    C = _random_traces(rng, n_comp, n_frames)
    assert cs.footprint_groups(A).n_overlap_pixels > 0
    offsets = OFFSETS_2D if len(dims) == 2 else OFFSETS_3D
    _check_all(A, C, t0, t1, dims, (*offsets, (0,) * len(dims)))


@pytest.mark.parametrize("nb", [1, 2, 3, 4])
@pytest.mark.parametrize("hull", [False, True])
def test_dense_background_matches_brute_force(
    nb: int, hull: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hull:
        monkeypatch.setattr(cs, "_HULL_MIN_PIXELS", 1)
        monkeypatch.setattr(cs, "_HULL_MIN_FRAMES", 8)
    rng = np.random.default_rng(10 + nb)
    dims = (10, 12)
    b = _random_dense_b(rng, int(np.prod(dims)), nb)
    f = rng.normal(size=(nb, 300)) + rng.normal(size=(nb, 1))
    _check_all(b, f, 0, None, dims, OFFSETS_2D)
    _check_all(b, f, 17, 230)


def test_dense_background_3d() -> None:
    rng = np.random.default_rng(5)
    dims = (4, 5, 3)
    b = _random_dense_b(rng, int(np.prod(dims)), 2)
    f = rng.normal(size=(2, 80))
    _check_all(b, f, 5, 70, dims, OFFSETS_3D)


def test_heavy_overlap_through_hull_path(hull_everywhere: None) -> None:
    rng = np.random.default_rng(21)
    dims = (9, 9)
    A = _random_footprints(rng, dims, 30)
    C = _random_traces(rng, 30, 400)
    _check_all(A, C, 0, None)
    _check_all(A, C, 50, 380)


def _square_edges(rng: np.random.Generator) -> FloatArray:
    """Interior points plus points on the edges of a square, jittered by ~1e-13."""
    inner = rng.uniform(-0.9, 0.9, size=(2, 400))
    s = rng.uniform(-1.0, 1.0, 25)
    one = np.ones(25)
    edges = np.hstack([[s, one], [s, -one], [one, s], [-one, s]])
    edges = edges + 1e-13 * rng.normal(size=edges.shape)
    pts = np.hstack([inner, edges])
    return pts[:, rng.permutation(pts.shape[1])]


def test_hull_degenerate_point_sets(hull_everywhere: None) -> None:
    rng = np.random.default_rng(3)
    n_pix, n_frames = 40, 200
    theta = np.sort(rng.uniform(0, 2 * np.pi, n_frames))
    cases = {
        "collinear": np.vstack([(x := rng.normal(size=n_frames)), 2.0 * x - 1.0]),
        "constant": np.ones((3, n_frames)) * np.array([[1.0], [-2.0], [0.5]]),
        "all on hull": np.vstack([np.cos(theta), np.sin(theta)]),
        "near hull": np.vstack([np.cos(theta), np.sin(theta)]) * (1 + 1e-12 * rng.random(n_frames)),
        "square edges": _square_edges(rng),
        "few distinct": rng.integers(0, 3, size=(3, n_frames)).astype(np.float64),
    }
    for name, f in cases.items():
        b = rng.normal(size=(n_pix, f.shape[0]))
        _check_all(b, f, std_floor=name == "constant")
    assert cs._hull_candidates(cases["collinear"]) is None  # Qhull fails: full pass
    assert cs._hull_candidates(cases["all on hull"]) is None  # pruning would not pay
    cand = cs._hull_candidates(cases["square edges"])
    assert cand is not None and 4 <= cand.size <= 100 + 8


def test_hull_candidates_contain_all_maximisers() -> None:
    rng = np.random.default_rng(4)
    for d in (2, 3, 4):
        Y = rng.normal(size=(d, 3000))
        cand = cs._hull_candidates(Y)
        assert cand is not None and cand.size < 3000 // 4  # pruning actually happens
        W = rng.normal(size=(500, d))
        full = W @ Y
        sub = W @ Y[:, cand]
        np.testing.assert_array_equal(full.max(axis=1), sub.max(axis=1))
        np.testing.assert_array_equal(full.min(axis=1), sub.min(axis=1))


def test_single_footprint_negative_weight() -> None:
    A = sp.csr_matrix(np.array([[2.0, 0.0], [-3.0, 0.0], [0.0, 0.0], [0.0, -0.5]]))
    C = np.array([[1.0, -4.0, 2.5], [3.0, 1.0, -2.0]])
    lo, hi = cs.structured_min_max(A, C)
    np.testing.assert_array_equal(lo, [-8.0, -7.5, 0.0, -1.5])
    np.testing.assert_array_equal(hi, [5.0, 12.0, 0.0, 1.0])


def test_no_components() -> None:
    dims = (4, 5)
    A = sp.csr_matrix((20, 0))
    C = np.zeros((0, 7))
    for fa in (A, np.zeros((20, 0))):
        np.testing.assert_array_equal(cs.structured_mean(fa, C), np.zeros(20))
        np.testing.assert_array_equal(cs.structured_std(fa, C, 2, 5), np.zeros(20))
        lo, hi = cs.structured_min_max(fa, C)
        np.testing.assert_array_equal(lo, np.zeros(20))
        np.testing.assert_array_equal(hi, np.zeros(20))
        covs = cs.structured_cov_pairs(fa, C, dims, [(1, 0), (0, 1)])
        ref = np.zeros(dims)
        ref[-1, :] = np.nan
        np.testing.assert_array_equal(covs[(1, 0)], ref)
        assert np.all(covs[(0, 1)][:, :-1] == 0) and np.all(np.isnan(covs[(0, 1)][:, -1]))


@pytest.mark.parametrize(
    "convert",
    [
        sp.csr_matrix,
        sp.csc_matrix,
        sp.coo_matrix,
        sp.csr_array,
        lambda a: np.asarray(a.todense()),
    ],
)
def test_input_formats_and_trace_dtypes(convert: object) -> None:
    rng = np.random.default_rng(8)
    dims = (6, 7)
    A = convert(_random_footprints(rng, dims, 10))  # type: ignore[operator]
    C = np.asfortranarray(_random_traces(rng, 10, 30))  # non-C-contiguous traces
    _check_all(A, C, 2, 29, dims, ((1, 0),))
    _check_all(A, C.astype(np.float32), 0, None)


def test_cov_pairs_large_negative_and_zero_offsets() -> None:
    rng = np.random.default_rng(9)
    dims = (5, 6)
    A = _random_footprints(rng, dims, 12)
    C = _random_traces(rng, 12, 25)
    movie = _movie(A, C, 0, None)
    offsets = [(-1, 0), (0, -2), (6, 0), (0, 0), (2, 3)]
    covs = cs.structured_cov_pairs(A, C, dims, offsets)
    for off in offsets:
        _assert_close(covs[off], _brute_cov(movie, dims, off))
    assert np.all(np.isnan(covs[(6, 0)]))
    _assert_close(covs[(0, 0)], cs.structured_std(A, C).reshape(dims) ** 2)


def test_groups_keyword_reuse_and_mismatch() -> None:
    rng = np.random.default_rng(12)
    A = _random_footprints(rng, (6, 6), 10)
    C = _random_traces(rng, 10, 40)
    groups = cs.footprint_groups(A)
    movie = _movie(A, C, 5, 30)
    _assert_close(cs.structured_std(A, C, 5, 30, groups=groups), movie.std(axis=1))
    _assert_close(cs.structured_min_max(A, C, 5, 30, groups=groups)[1], movie.max(axis=1))
    other = cs.footprint_groups(sp.csr_matrix((35, 10)))
    with pytest.raises(ShapeMismatchError, match="groups were computed"):
        cs.structured_std(A, C, groups=other)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "func",
    [cs.structured_mean, cs.structured_std, cs.structured_min_max],
)
def test_window_validation(func: object) -> None:
    A = sp.random(12, 3, density=0.5, random_state=0, format="csr")
    C = np.ones((3, 10))
    with pytest.raises(ShapeMismatchError, match="empty time window"):
        func(A, C, 4, 4)  # type: ignore[operator]
    with pytest.raises(ShapeMismatchError, match="empty time window"):
        func(A, C, 6, 2)  # type: ignore[operator]
    with pytest.raises(ShapeMismatchError, match="outside"):
        func(A, C, 0, 11)  # type: ignore[operator]
    with pytest.raises(ShapeMismatchError, match="outside"):
        func(A, C, -1, 5)  # type: ignore[operator]
    with pytest.raises(ShapeMismatchError, match="rows"):
        func(A, np.ones((4, 10)))  # type: ignore[operator]
    with pytest.raises(ShapeMismatchError, match="2D"):
        func(A, np.ones(10))  # type: ignore[operator]


def test_cov_pairs_validation() -> None:
    A = sp.random(12, 3, density=0.5, random_state=0, format="csr")
    C = np.ones((3, 10))
    with pytest.raises(ShapeMismatchError, match="dims"):
        cs.structured_cov_pairs(A, C, (5, 3), [(1, 0)])
    with pytest.raises(ShapeMismatchError, match="offset"):
        cs.structured_cov_pairs(A, C, (4, 3), [(1, 0, 0)])
    with pytest.raises(ShapeMismatchError, match="empty time window"):
        cs.structured_cov_pairs(A, C, (4, 3), [(1, 0)], 3, 3)


def test_validation_errors_are_ours_and_value_errors() -> None:
    A = sp.random(12, 3, density=0.5, random_state=0, format="csr")
    C = np.ones((3, 10))
    with pytest.raises(ShapeMismatchError, match=r"spatial factor must be 2D.*\(12,\)") as exc:
        cs.structured_mean(np.ones(12), C)
    assert isinstance(exc.value, CaimanDaskError) and isinstance(exc.value, ValueError)
    with pytest.raises(ShapeMismatchError, match=r"dims \(5, 3\) hold 15 pixels.*12 rows"):
        cs.structured_cov_pairs(A, C, (5, 3), [(1, 0)])
    with pytest.raises(ShapeMismatchError, match="non-empty tuple of positive integers"):
        cs.structured_cov_pairs(A, C, (0, 3), [(1, 0)])
    with pytest.raises(ShapeMismatchError, match="4 rows but the spatial factor has 3 columns"):
        cs.structured_mean(A, np.ones((4, 10)))


# --------------------------------------------------------------------------
# property test
# --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ndim=st.sampled_from([2, 3]),
    n_comp=st.integers(0, 15),
    n_frames=st.integers(1, 40),
    data=st.data(),
)
def test_property_random_problems(
    seed: int, ndim: int, n_comp: int, n_frames: int, data: st.DataObject
) -> None:
    rng = np.random.default_rng(seed)
    dims = (5, 6) if ndim == 2 else (3, 4, 3)
    t0 = data.draw(st.integers(0, n_frames - 1), label="t0")
    t1 = data.draw(st.integers(t0 + 1, n_frames), label="t1")
    A = _random_footprints(rng, dims, n_comp)
    C = _random_traces(rng, n_comp, n_frames)
    offsets = OFFSETS_2D if ndim == 2 else OFFSETS_3D
    _check_all(A, C, t0, t1, dims, offsets)
    nb = data.draw(st.integers(1, 4), label="nb")
    b = _random_dense_b(rng, int(np.prod(dims)), nb)
    f = rng.normal(size=(nb, n_frames))
    _check_all(b, f, t0, t1, dims, offsets[:1])


def test_helpers_detect_errors() -> None:
    """The comparison helper is not vacuous: a wrong answer fails it."""
    ref = np.array([1.0, -2.0, np.nan])
    _assert_close(ref.copy(), ref)
    with pytest.raises(AssertionError):
        _assert_close(ref + np.array([0.0, 1e-9, 0.0]), ref)
    with pytest.raises(AssertionError):
        _assert_close(np.array([1.0, -2.0, 0.0]), ref)
