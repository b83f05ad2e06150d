"""The fused correlation-moment kernel (caiman_dask._corr_kernels) against block_stats.

The reference is :func:`caiman_dask._streaming.block_stats` (two passes, block-centred) of the
dense float64 residual frames ``Y − b·f − A·C`` computed by NumPy. Tolerances, as a fraction
of each statistic's largest value (:func:`caiman_dask.testing.assert_close_scaled`):

- ``mean`` / ``min`` / ``max``: 1e-12. Both sides compute the residual in float64 from the
  same inputs (float32 movies are widened exactly); only the order of the footprint sum
  differs, ~1e-16 of the movie's offset (500).
- ``m2`` / ``comoment``: 1e-9. The kernel sums data shifted by each pixel's first residual in
  one pass; its error is eps · (1 + k²) · (summation growth) with k the first residual's
  distance from the mean in standard deviations (module docstring); measured ~1e-14 here.
- the correlation image vs CaImAn's dense reference: 1e-9 (sums of numbers in [-1, 1]);
  NaN where a pixel is constant, at the same places.
- ``comoment`` is exactly 0 where the neighbour leaves the frame, and the result does not
  depend on how the frames are split into ``update`` calls, bit for bit.
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from caiman_dask import _corr_kernels
from caiman_dask._corr_kernels import BAND_PIXELS, CorrMomentsState
from caiman_dask._frame_kernels import frame_rows, frames
from caiman_dask._moment_kernels import prepare_moments
from caiman_dask._streaming import (
    CORR_OFFSETS_2D,
    block_stats,
    finalize,
    local_correlations_reference,
    stats_to_c_order,
)
from caiman_dask.errors import ShapeMismatchError
from caiman_dask.testing import assert_close_scaled

RTOL_MOMENTS = 1e-12
RTOL_CENTRED = 1e-9
RTOL_CORR = 1e-9
KEYS = ("mean", "m2", "min", "max", "comoment")


def _problem(rng, shape, *, n=9, K=6, nb=2, dtype=np.float64):
    """Footprints (blobs of runs along rows, some overlapping), background, traces and a
    movie ``(n, R * Cc)`` with an offset, pixels in C order of ``shape``."""
    R, Cc = shape
    P = R * Cc
    dense = np.zeros((P, K))
    for k in range(K):
        i0, j0 = rng.integers(0, R), rng.integers(0, Cc)
        for i in range(i0, min(R, i0 + 3)):
            j1 = min(Cc, j0 + int(rng.integers(1, 6)))
            dense[i * Cc + j0 : i * Cc + j1, k] = rng.uniform(0.2, 1.0, size=j1 - j0)
    A = scipy.sparse.csc_matrix(dense)
    Ct = rng.normal(size=(n, K)) * 5
    b = rng.normal(size=(P, nb)) if nb else None
    ft = rng.normal(size=(n, nb)) * 3 if nb else None
    Y = (rng.normal(size=(n, P)) * 3 + 500).astype(dtype)
    return A, Ct, b, ft, Y


def _residual(A, Ct, b, ft, Y):
    r = np.asarray(Y, np.float64) - Ct @ A.toarray().T
    return r - ft @ b.T if b is not None else r


def _fold(A, Ct, b, ft, Y, shape, cuts=()):
    state = CorrMomentsState(prepare_moments(A, b), shape)
    edges = [0, *cuts, Y.shape[0]]
    for s, e in itertools.pairwise(edges):
        state.update(Y[s:e], Ct[s:e], None if ft is None else ft[s:e])
    return state.result()


def _assert_matches(got, ref):
    assert got["n"] == ref["n"]
    for key in ("mean", "min", "max"):
        assert got[key].shape == ref[key].shape
        assert_close_scaled(got[key], ref[key], rtol=RTOL_MOMENTS)
    for key in ("m2", "comoment"):
        assert_close_scaled(got[key], ref[key], rtol=RTOL_CENTRED)
    _assert_outside_zero(got["comoment"])


def _assert_outside_zero(com):
    """``comoment`` is exactly 0 where the neighbour falls outside the frame."""
    R, Cc = com.shape[1:]
    for k, (di, dj) in enumerate(CORR_OFFSETS_2D):
        inside = np.zeros((R, Cc), bool)
        inside[: R - di, max(0, -dj) : Cc - max(0, dj)] = True
        assert not com[k][~inside].any()


# rows not multiples of the 8-lane vectors; one row; one column; a single pixel; several
# bands with a short last band (BAND_PIXELS // 1000 rows each), a row as long as a band, a
# row longer than a band (one row per band), a column longer than a band
SHAPES = [
    (37, 41),
    (1, 50),
    (50, 1),
    (1, 1),
    (13, 1000),
    (3, BAND_PIXELS),
    (3, BAND_PIXELS + 5),
    (BAND_PIXELS + 3, 1),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nb", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_block_stats(rng, shape, nb, dtype):
    A, Ct, b, ft, Y = _problem(rng, shape, nb=nb, dtype=dtype)
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(-1, *shape), corr=True)
    _assert_matches(_fold(A, Ct, b, ft, Y, shape), ref)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 70])
def test_frame_counts(rng, n):
    # one frame (only the shifts); fewer than a group of four; the first group plus single
    # frames; several footprint chunks of a band
    shape = (20, 30)
    A, Ct, b, ft, Y = _problem(rng, shape, n=n)
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(n, *shape), corr=True)
    _assert_matches(_fold(A, Ct, b, ft, Y, shape), ref)


def test_every_pixel_covered(rng):
    # footprints over the whole frame: a band's footprint products come in chunks of 4 frames
    shape = (40, 300)
    A, Ct, b, ft, Y = _problem(rng, shape, n=13)
    A = scipy.sparse.csc_matrix(np.hstack([A.toarray(), rng.uniform(size=(12000, 2))]))
    Ct = np.hstack([Ct, rng.normal(size=(13, 2))])
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(13, *shape), corr=True)
    _assert_matches(_fold(A, Ct, b, ft, Y, shape), ref)


def test_large_offset_small_noise(rng):
    # shifted sums keep their precision where raw sums of squares would lose it all
    shape = (9, 11)
    A, Ct, b, ft, _ = _problem(rng, shape, n=50)
    Y = 1e6 + rng.normal(size=(50, 99)) * 1e-2
    Y[0] += 0.1  # a first frame 10 standard deviations out
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(50, *shape), corr=True)
    _assert_matches(_fold(A, Ct, b, ft, Y, shape), ref)


def test_without_components(rng):
    shape = (17, 23)
    _, _, b, ft, Y = _problem(rng, shape)
    A = scipy.sparse.csc_matrix((17 * 23, 0))
    Ct = np.zeros((Y.shape[0], 0))
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(-1, *shape), corr=True)
    _assert_matches(_fold(A, Ct, b, ft, Y, shape), ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_frames_and_block_stats(rng, dtype):
    # the path it replaces: residual frames from caiman_dask._frame_kernels.frames
    shape = (33, 47)
    A, Ct, b, ft, Y = _problem(rng, shape, n=11, dtype=dtype)
    out = np.empty(Y.shape)
    frames(out, A, Ct, b, ft, Y.reshape(-1, *shape))
    ref = block_stats(out.reshape(-1, *shape), corr=True)
    _assert_matches(_fold(A, Ct, b, ft, Y, shape), ref)


@pytest.mark.parametrize("dims", [(12, 17), (1, 9), (9, 1), (5, 3000)])
def test_fortran_rows_convert_with_stats_to_c_order(rng, dims):
    # a CaImAn frame-major memmap: frames stored in Fortran order, read as rows in that order
    # with the footprints' rows in the same order; stats_to_c_order gives the C-order stats
    h, w = dims
    A, Ct, b, ft, Y = _problem(rng, dims, n=10, dtype=np.float32)
    movie = Y.reshape(-1, h, w)
    stored = np.ascontiguousarray(movie.transpose(0, 2, 1)).transpose(0, 2, 1)
    rows = stored.transpose(0, 2, 1).reshape(-1, h * w)  # no copy
    if min(dims) > 1:  # (one row or column: C and Fortran order coincide)
        assert frame_rows(stored)[1]
        assert np.shares_memory(frame_rows(stored)[0], stored)
    perm = np.arange(h * w).reshape(h, w).T.ravel()  # Fortran position -> C pixel
    A_F = scipy.sparse.csc_matrix(A.toarray()[perm])
    b_F = b[perm]
    got = stats_to_c_order(_fold(A_F, Ct, b_F, ft, rows, (w, h)), dims)
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(-1, h, w), corr=True)
    _assert_matches(got, ref)


@settings(max_examples=40, deadline=None)
@given(
    R=st.integers(1, 12),
    Cc=st.integers(1, 40),
    n=st.integers(1, 23),
    nb=st.integers(0, 3),
    f32=st.booleans(),
    data=st.data(),
)
def test_splits_do_not_change_the_result(R, Cc, n, nb, f32, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dtype = np.float32 if f32 else np.float64
    A, Ct, b, ft, Y = _problem(rng, (R, Cc), n=n, nb=nb, dtype=dtype)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n - 1)), max_size=6)) - {n})
    whole = _fold(A, Ct, b, ft, Y, (R, Cc))
    split = _fold(A, Ct, b, ft, Y, (R, Cc), cuts)
    for key in KEYS:
        np.testing.assert_array_equal(split[key], whole[key])
    ref = block_stats(_residual(A, Ct, b, ft, Y).reshape(n, R, Cc), corr=True)
    _assert_matches(whole, ref)


def test_one_frame_at_a_time_is_bitwise_one_block(rng):
    shape = (29, 31)
    A, Ct, b, ft, Y = _problem(rng, shape, n=21, nb=3, dtype=np.float32)
    whole = _fold(A, Ct, b, ft, Y, shape)
    single = _fold(A, Ct, b, ft, Y, shape, range(1, 21))
    for key in KEYS:
        np.testing.assert_array_equal(single[key], whole[key])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_correlation_image_matches_caiman_reference(rng, dtype):
    shape = (23, 19)
    A, Ct, b, ft, Y = _problem(rng, shape, n=40, dtype=dtype)
    # a constant residual pixel: uncovered, no background, a constant movie value -> NaN in
    # the image there and at every pixel it is summed into, as in CaImAn
    p = 5 * 19 + 7
    A = scipy.sparse.csc_matrix(A.multiply(np.arange(A.shape[0])[:, None] != p))
    b[p] = 0.0
    Y[:, p] = 321.5
    r = _residual(A, Ct, b, ft, Y).reshape(-1, *shape)
    stats = _fold(A, Ct, b, ft, Y, shape)
    assert stats["m2"][5, 7] == 0.0  # exactly
    assert stats["mean"][5, 7] == 321.5
    img = finalize(stats, ["corr"])["corr"]
    assert np.isnan(img[5, 7])
    assert_close_scaled(img, local_correlations_reference(r), rtol=RTOL_CORR)


def test_constant_pixels_have_exactly_zero_moments(rng):
    shape = (6, 7)
    A = scipy.sparse.csc_matrix((42, 2))
    Y = np.full((9, 42), 1234.567, np.float32)
    Y[:, 10] += np.arange(9, dtype=np.float32)  # one varying pixel
    got = _fold(A, np.zeros((9, 2)), None, None, Y, shape)
    m2 = got["m2"].ravel()
    assert not np.delete(m2, 10).any()
    assert m2[10] > 0
    assert not got["comoment"].any()  # every pair involves a constant pixel
    np.testing.assert_array_equal(np.delete(got["mean"].ravel(), 10), np.float32(1234.567))


def test_any_dtype_and_strides(rng):
    shape = (11, 13)
    A, Ct, b, ft, _ = _problem(rng, shape, n=70)
    Y = rng.integers(-300, 3000, size=(70, 143)).astype(np.int16)
    want = _fold(A, Ct, b, ft, Y.astype(np.float64), shape)
    strided = np.asfortranarray(Y)  # copied a block of frames at a time
    for got in (_fold(A, Ct, b, ft, Y, shape), _fold(A, Ct, b, ft, strided, shape)):
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_no_frames_gives_block_stats_of_an_empty_block(rng):
    A, _, b, _, _ = _problem(rng, (4, 5))
    state = CorrMomentsState(prepare_moments(A, b), (4, 5))
    state.update(np.zeros((0, 20)), np.zeros((0, 6)), np.zeros((0, 2)))
    got = state.result()
    ref = block_stats(np.zeros((0, 4, 5)), corr=True)
    assert got["n"] == ref["n"] == 0
    for key in KEYS:
        np.testing.assert_array_equal(got[key], ref[key])


def test_bad_shapes_raise(rng):
    A, Ct, b, ft, Y = _problem(rng, (4, 5))
    op = prepare_moments(A, b)
    with pytest.raises(ShapeMismatchError, match="shape="):
        CorrMomentsState(op, (4, 6))
    with pytest.raises(ShapeMismatchError, match="shape="):
        CorrMomentsState(op, (20,))  # type: ignore[arg-type]
    state = CorrMomentsState(op, (4, 5))
    with pytest.raises(ShapeMismatchError, match="y has shape"):
        state.update(Y[:, :19], Ct, ft)
    with pytest.raises(ShapeMismatchError, match="ct has shape"):
        state.update(Y, Ct[:, :2], ft)
    with pytest.raises(ShapeMismatchError, match="ft has shape"):
        state.update(Y, Ct, np.zeros((Y.shape[0], 3)))
    assert state.n == 0


def test_docstring_examples():
    assert doctest.testmod(_corr_kernels).failed == 0
