"""Tests of caiman_dask._streaming: one-pass mergeable statistics and CaImAn's correlation image.

Tolerances (why they are what they are):

- CaImAn computed ``refs_2p.npz['correlation_image']`` in float32; our float64 arithmetic differs
  from it by about 1e-7, so that comparison uses ``atol=1e-6``.
- The other references in ``refs_2p.npz`` are float64; streamed vs dense float64 uses
  ``rtol=1e-10`` for mean / std (min / max are exact) and ``rtol=1e-10, atol=1e-12`` for the
  correlation image (its values are sums of numbers in [-1, 1] that can cancel to ~0, where a
  relative tolerance alone is meaningless).
- NaN positions must match exactly (``equal_nan=True`` fails on NaN vs number).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caiman_dask._streaming import (
    CORR_OFFSETS_2D,
    CORR_OFFSETS_3D,
    block_stats,
    caiman_corr_from_pairs,
    corr_offsets,
    finalize,
    local_correlations_reference,
    merge_many,
    merge_stats,
)
from caiman_dask.errors import OptionError, ShapeMismatchError

RTOL = 1e-10
ATOL_CORR = 1e-12
KINDS = ("mean", "std", "min", "max", "corr")


def _fixture_dir() -> Path:
    env = os.environ.get("CAIMAN_DASK_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared/fixtures/caiman"


FIXTURES = _fixture_dir()
Y_MMAP = "memmap_d1_60_d2_80_d3_1_order_C_frames_400.mmap"
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "refs_2p.npz").is_file() or not (FIXTURES / Y_MMAP).is_file(),
    reason=f"CaImAn fixtures not found in {FIXTURES} (set CAIMAN_DASK_FIXTURES)",
)


def stream(movie: np.ndarray, cuts: list[int] | range, *, corr: bool = True) -> dict:
    """Statistics of ``movie`` streamed in blocks split at the frame indices ``cuts``."""
    edges = [0, *cuts, movie.shape[0]]
    return merge_many([block_stats(movie[a:b], corr=corr) for a, b in itertools.pairwise(edges)])


def dense_projections(movie: np.ndarray) -> dict[str, np.ndarray]:
    y = np.asarray(movie, dtype=np.float64)
    lo, hi, std = y.min(0), y.max(0), y.std(0)
    std[lo == hi] = 0.0  # np.std of a constant float64 trace can be ~1e-12 (mean rounding)
    return {"mean": y.mean(0), "std": std, "min": lo, "max": hi}


def assert_images_equal(got: dict, movie: np.ndarray, corr: np.ndarray | None = None) -> None:
    want = dense_projections(movie)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=RTOL, atol=0)
    np.testing.assert_array_equal(got["min"], want["min"])
    np.testing.assert_array_equal(got["max"], want["max"])
    np.testing.assert_allclose(got["std"], want["std"], rtol=RTOL, atol=1e-12)
    if "corr" in got:
        ref = local_correlations_reference(movie) if corr is None else corr
        np.testing.assert_allclose(got["corr"], ref, rtol=RTOL, atol=ATOL_CORR, equal_nan=True)


# --------------------------------------------------------------------------------------------
# real CaImAn outputs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refs_2p() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "refs_2p.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def movie_2p(refs_2p: dict[str, np.ndarray]) -> np.ndarray:
    dims = tuple(int(d) for d in refs_2p["dims"])
    T = int(refs_2p["T"])
    yr = np.memmap(FIXTURES / Y_MMAP, dtype=np.float32, mode="r", shape=(int(np.prod(dims)), T))
    return np.array(yr).T.reshape((T, *dims), order="F")


@needs_fixtures
def test_reference_reproduces_caiman_correlation_image(movie_2p, refs_2p) -> None:
    ref = local_correlations_reference(movie_2p)
    np.testing.assert_allclose(ref, refs_2p["correlation_image"], rtol=0, atol=1e-6)


@needs_fixtures
def test_streamed_projections_and_corr_of_y(movie_2p, refs_2p) -> None:
    st_ = stream(movie_2p, range(37, movie_2p.shape[0], 37))
    got = finalize(st_, KINDS)
    for kind in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(got[kind], refs_2p[f"Y_proj_{kind}"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(got["corr"], refs_2p["correlation_image"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        got["corr"], local_correlations_reference(movie_2p), rtol=RTOL, atol=ATOL_CORR
    )
    for v in got.values():
        assert v.dtype == np.float64
        assert v.shape == movie_2p.shape[1:]


@needs_fixtures
def test_rcm_slice_nan_pattern(refs_2p) -> None:
    # RCM is exactly 0 (constant) outside every footprint: NaN must spread like CaImAn's
    rcm = refs_2p["rcm_frames_10_50"]
    ref = local_correlations_reference(rcm)
    assert np.isnan(ref).any() and not np.isnan(ref).all()
    got = finalize(stream(rcm, [1, 2, 9, 20, 33]), KINDS)
    assert_images_equal(got, rcm, ref)


@needs_fixtures
def test_full_caiman_correlation_images_rcm_rcb_residual(movie_2p, refs_2p) -> None:
    """The 400-frame RCM / RCB / residual movies against CaImAn's own correlation images."""
    h5py = pytest.importorskip("h5py")
    sparse = pytest.importorskip("scipy.sparse")
    with h5py.File(FIXTURES / "cnmf_2p.hdf5", "r") as h:
        g = h["estimates/A"]
        a = sparse.csc_matrix(
            (g["data"][()], g["indices"][()], g["indptr"][()]), shape=tuple(g["shape"][()])
        )
        c, b, f = h["estimates/C"][()], h["estimates/b"][()], h["estimates/f"][()]
    T, dims = movie_2p.shape[0], movie_2p.shape[1:]

    def frames(x: np.ndarray) -> np.ndarray:
        return np.asarray(x).T.reshape((T, *dims), order="F")

    rcm, rcb = frames(a @ c), frames(b @ f)
    residual = movie_2p.astype(np.float64) - rcm - rcb
    for name, movie in (("rcm", rcm), ("rcb", rcb), ("residual", residual)):
        want = refs_2p[f"correlation_image_{name}"]
        got = finalize(stream(movie, [50, 51, 200, 333]), ["corr", "std"])
        np.testing.assert_allclose(got["corr"], want, rtol=1e-9, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(
            local_correlations_reference(movie), want, rtol=1e-9, atol=1e-12, equal_nan=True
        )
        np.testing.assert_allclose(got["std"], refs_2p[f"{name}_proj_std"], rtol=RTOL, atol=1e-9)
    assert np.isnan(refs_2p["correlation_image_rcm"]).sum() == 2692


# --------------------------------------------------------------------------------------------
# NaN propagation, written out pair by pair
# --------------------------------------------------------------------------------------------


def _caiman_pairs_per_pixel_2d(d1: int, d2: int) -> dict[tuple[int, int], list]:
    """For each pixel, the pixel pairs whose correlation CaImAn adds to it (README rules)."""
    out: dict[tuple[int, int], list] = {(i, j): [] for i in range(d1) for j in range(d2)}
    for i in range(d1):
        for j in range(d2):
            if i + 1 < d1:  # vertical
                pair = ((i, j), (i + 1, j))
                out[(i, j)].append(pair)
                out[(i + 1, j)].append(pair)
            if j + 1 < d2:  # horizontal
                pair = ((i, j), (i, j + 1))
                out[(i, j)].append(pair)
                out[(i, j + 1)].append(pair)
            if i + 1 < d1 and j + 1 < d2:
                d2pair = ((i, j), (i + 1, j + 1))
                out[(i, j)].append(d2pair)
                out[(i, j + 1)].append(d2pair)  # quirk: not part of the pair
                d1pair = ((i + 1, j), (i, j + 1))
                out[(i + 1, j)].append(d1pair)
                out[(i + 1, j + 1)].append(d1pair)  # quirk: not part of the pair
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nan_pattern_2d_matches_caiman_rules(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d1, d2, T = 7, 9, 30
    movie = 1500.0 + 5.0 * rng.standard_normal((T, d1, d2))
    const = rng.random((d1, d2)) < 0.12
    const[0, 0] = const[-1, -1] = True
    movie[:, const] = 1234.5 + rng.standard_normal(int(const.sum()))  # per-pixel constants
    pairs = _caiman_pairs_per_pixel_2d(d1, d2)
    want_nan = np.zeros((d1, d2), bool)
    for px, plist in pairs.items():
        want_nan[px] = any(const[p] or const[q] for p, q in plist)
    got = finalize(stream(movie.astype(np.float32), [3, 4, 17]), ["corr", "std"])
    np.testing.assert_array_equal(np.isnan(got["corr"]), want_nan)
    np.testing.assert_array_equal(got["std"][const], 0.0)
    np.testing.assert_array_equal(np.isnan(local_correlations_reference(movie)), want_nan)
    # neighbour counts: a constant-free movie has no NaN and the counts are 8 / 5 / 3
    free = 1500.0 + rng.standard_normal((T, d1, d2))
    ok = finalize(stream(free, [10]), ["corr"])["corr"]
    assert not np.isnan(ok).any()


def test_nan_pattern_3d_face_neighbours() -> None:
    rng = np.random.default_rng(5)
    dims = (4, 5, 3)
    movie = 1000.0 + 3.0 * rng.standard_normal((20, *dims))
    movie[:, 1, 2, 1] = 7.0
    got = finalize(stream(movie, [5, 6]), ["corr"])["corr"]
    want = np.zeros(dims, bool)
    want[1, 2, 1] = True
    for ax in range(3):
        for s in (-1, 1):
            idx = [1, 2, 1]
            idx[ax] += s
            if 0 <= idx[ax] < dims[ax]:
                want[tuple(idx)] = True
    np.testing.assert_array_equal(np.isnan(got), want)


def test_corr_of_perfectly_correlated_movie_is_one() -> None:
    rng = np.random.default_rng(3)
    trace = rng.standard_normal(50)
    for dims in ((6, 7), (3, 4, 5)):
        scale = 1.0 + rng.random(dims)
        movie = 2000.0 + trace.reshape(-1, *[1] * len(dims)) * scale
        got = finalize(stream(movie, [7, 8, 30]), ["corr"])["corr"]
        np.testing.assert_allclose(got, 1.0, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# caiman_corr_from_pairs, the entry point shared with the factor-structure path
# --------------------------------------------------------------------------------------------


def _dense_cov_pairs(movie: np.ndarray, fill: float) -> tuple[np.ndarray, dict]:
    y = np.asarray(movie, dtype=np.float64)
    dims = y.shape[1:]
    d = y - y.mean(0)
    var = (d * d).mean(0)
    pairs = {}
    for off in corr_offsets(len(dims)):
        cov = np.full(dims, fill)
        for x in np.ndindex(*dims):
            q = tuple(a + o for a, o in zip(x, off, strict=True))
            if all(0 <= a < n for a, n in zip(q, dims, strict=True)):
                cov[x] = (d[(slice(None), *x)] * d[(slice(None), *q)]).mean()
        pairs[off] = cov
    return var, pairs


@pytest.mark.parametrize("dims", [(5, 6), (1, 4), (4, 1), (3, 4, 2), (1, 3, 2)])
@pytest.mark.parametrize("fill", [np.nan, 1e300])
def test_corr_from_dense_pairs(dims: tuple[int, ...], fill: float) -> None:
    rng = np.random.default_rng(len(dims) + dims[0])
    movie = 1800.0 + 4.0 * rng.standard_normal((25, *dims))
    movie += 2.0 * rng.standard_normal((25,) + (1,) * len(dims))  # shared signal
    var, pairs = _dense_cov_pairs(movie, fill)
    got = caiman_corr_from_pairs(var, pairs, dims)
    np.testing.assert_allclose(
        got, local_correlations_reference(movie), rtol=RTOL, atol=ATOL_CORR, equal_nan=True
    )


def test_offset_keys() -> None:
    assert CORR_OFFSETS_2D == ((1, 0), (0, 1), (1, 1), (1, -1))
    assert CORR_OFFSETS_3D == ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    st_ = block_stats(np.ones((2, 3, 4)), corr=True)
    assert st_["comoment"].shape == (4, 3, 4)
    assert block_stats(np.ones((2, 3, 4, 5)), corr=True)["comoment"].shape == (3, 3, 4, 5)


def test_anti_diagonal_convention() -> None:
    # key (1, -1) at x = (i, j) is cov(x(i, j), x(i+1, j-1)): check on a movie where only that
    # pair co-varies
    rng = np.random.default_rng(9)
    movie = rng.standard_normal((400, 3, 3))
    movie[:, 2, 0] = movie[:, 1, 1] + 1e-3 * rng.standard_normal(400)
    st_ = block_stats(movie, corr=True)
    k = CORR_OFFSETS_2D.index((1, -1))
    com = st_["comoment"][k] / st_["n"]
    assert com[1, 1] > 0.5
    com[1, 1] = 0.0
    assert np.abs(com).max() < 0.3


def test_corr_from_pairs_errors() -> None:
    with pytest.raises(OptionError):
        caiman_corr_from_pairs(np.ones((3, 3)), {(1, 0): np.zeros((3, 3))}, (3, 3))
    with pytest.raises(ShapeMismatchError):
        caiman_corr_from_pairs(np.ones((3, 4)), {}, (3, 3))
    with pytest.raises(ShapeMismatchError):
        caiman_corr_from_pairs(np.ones(3), {}, (3,))


# --------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------


def _assert_stats_close(a: dict, b: dict) -> None:
    assert a["n"] == b["n"]
    assert set(a) == set(b)
    np.testing.assert_array_equal(a["min"], b["min"])
    np.testing.assert_array_equal(a["max"], b["max"])
    scale = np.sqrt(np.maximum(a["m2"], 1e-300))
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-13)
    np.testing.assert_allclose(a["m2"], b["m2"], rtol=1e-12)
    if "comoment" in a:
        # co-moments can be ~0: compare relative to the product of the two pixels' spreads
        np.testing.assert_allclose(
            a["comoment"], b["comoment"], rtol=1e-12, atol=1e-12 * float(scale.max() ** 2)
        )


@pytest.mark.parametrize("dims", [(6, 5), (3, 4, 2), (7,)])
def test_merge_associative_and_commutative(dims: tuple[int, ...]) -> None:
    rng = np.random.default_rng(11)
    corr = len(dims) in (2, 3)
    blocks = [2000.0 + 5.0 * rng.standard_normal((n, *dims)) for n in (1, 13, 4, 30)]
    s = [block_stats(b, corr=corr) for b in blocks]
    left = merge_stats(merge_stats(merge_stats(s[0], s[1]), s[2]), s[3])
    right = merge_stats(s[0], merge_stats(s[1], merge_stats(s[2], s[3])))
    shuffled = merge_many([s[2], s[0], s[3], s[1]])
    whole = block_stats(np.concatenate(blocks), corr=corr)
    for other in (right, shuffled, whole):
        _assert_stats_close(left, other)


def test_merge_does_not_modify_inputs_and_empty_is_identity() -> None:
    rng = np.random.default_rng(2)
    a = block_stats(rng.standard_normal((5, 4, 3)), corr=True)
    b = block_stats(rng.standard_normal((3, 4, 3)), corr=True)
    copies = [{k: np.copy(v) for k, v in x.items()} for x in (a, b)]
    merge_stats(a, b)
    for x, c in zip((a, b), copies, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], c[k])
    empty = block_stats(np.empty((0, 4, 3)), corr=True)
    assert empty["n"] == 0
    for m in (merge_stats(empty, a), merge_stats(a, empty)):
        _assert_stats_close(m, a)
        assert m["mean"] is not a["mean"]


def test_block_stats_inputs_and_errors() -> None:
    rng = np.random.default_rng(4)
    base = rng.integers(0, 4000, size=(9, 8, 6)).astype(np.uint16)
    movie = base[:, ::-1, ::2]  # non-contiguous integer view
    got = finalize(stream(movie, [4]), KINDS)
    assert_images_equal(got, movie)
    got16 = finalize(block_stats(movie.astype(np.float16), corr=True), KINDS)
    assert_images_equal(got16, movie.astype(np.float16))
    # 1-D frames work without corr
    line = rng.standard_normal((10, 5)) + 1000.0
    st_ = block_stats(line, corr=False)
    np.testing.assert_allclose(finalize(st_, ["std"])["std"], line.std(0), rtol=RTOL)
    with pytest.raises(ShapeMismatchError):
        block_stats(line, corr=True)
    with pytest.raises(ShapeMismatchError):
        block_stats(np.zeros(4), corr=False)
    with pytest.raises(OptionError):
        finalize(st_, ["median"])
    with pytest.raises(OptionError):
        finalize(st_, ["corr"])
    with pytest.raises(ShapeMismatchError):
        finalize(block_stats(np.empty((0, 3, 3)), corr=False), ["mean"])
    with pytest.raises(ShapeMismatchError):
        merge_stats(block_stats(np.ones((1, 2, 2)), corr=False), st_)
    with pytest.raises(ShapeMismatchError, match="at least one statistics dictionary"):
        merge_many([])


# --------------------------------------------------------------------------------------------
# property test: any chunking equals the dense float64 computation
# --------------------------------------------------------------------------------------------


@st.composite
def chunked_movies(draw: st.DrawFn, ndim: int) -> tuple[np.ndarray, list[int], list[int]]:
    hi = 7 if ndim == 2 else 4
    dims = tuple(draw(st.integers(1, hi)) for _ in range(ndim))
    T = draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 1000.0, 1500.0, 2000.0]))
    scale = draw(st.sampled_from([0.5, 5.0, 40.0]))
    movie = offset + scale * rng.standard_normal((T, *dims))
    movie += draw(st.floats(0, 3)) * scale * rng.standard_normal((T,) + (1,) * ndim)  # shared
    if draw(st.booleans()):
        const = rng.random(dims) < 0.25
        movie[:, const] = movie[0, const]
    movie = movie.astype(draw(st.sampled_from([np.float32, np.float64])))
    if T > 1 and draw(st.booleans()):
        cuts = list(range(1, T))  # 1-frame blocks
    else:
        cuts = sorted(draw(st.sets(st.integers(1, max(T - 1, 1)), max_size=T)) - {T})
    order = draw(st.permutations(range(len(cuts) + 1)))
    return movie, cuts, list(order)


def _stream_in_order(movie: np.ndarray, cuts: list[int], order: list[int]) -> dict:
    edges = [0, *cuts, movie.shape[0]]
    blocks = [block_stats(movie[edges[k] : edges[k + 1]], corr=True) for k in order]
    acc = blocks[0]
    for b in blocks[1:]:  # left fold in a shuffled order (merge_many would use a tree)
        acc = merge_stats(acc, b)
    return acc


@settings(max_examples=80, deadline=None)
@given(chunked_movies(2))
def test_streaming_equals_dense_2d(case: tuple[np.ndarray, list[int], list[int]]) -> None:
    movie, cuts, order = case
    assert_images_equal(finalize(_stream_in_order(movie, cuts, order), KINDS), movie)
    assert_images_equal(finalize(stream(movie, cuts), KINDS), movie)


@settings(max_examples=60, deadline=None)
@given(chunked_movies(3))
def test_streaming_equals_dense_3d(case: tuple[np.ndarray, list[int], list[int]]) -> None:
    movie, cuts, order = case
    assert_images_equal(finalize(_stream_in_order(movie, cuts, order), KINDS), movie)


def test_larger_blocks_exercise_tiling() -> None:
    # frames big enough that the kernels split them into several row / pixel tiles
    rng = np.random.default_rng(8)
    for dims in ((70, 300), (9, 40, 33)):
        movie = (1500.0 + 5.0 * rng.standard_normal((40, *dims))).astype(np.float32)
        movie[:, 3, 5] = 42.0
        got = finalize(stream(movie, [1, 17]), KINDS)
        assert_images_equal(got, movie)
        nocorr = finalize(stream(movie, [23], corr=False), ["mean", "std", "min", "max"])
        for k, v in nocorr.items():
            np.testing.assert_allclose(v, got[k], rtol=1e-13, atol=0)
