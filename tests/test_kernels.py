"""Block kernels against their plain NumPy twins (float64, 1e-12 of the data's scale)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse

from caiman_dask._frame_kernels import (
    footprint_runs,
    frames,
    frames_reference,
    gather_pixel_major,
    n_bands,
    pixel_major,
    residual_bands,
)
from caiman_dask._moment_kernels import MomentsState, prepare_moments, residual_moments
from caiman_dask.testing import assert_close_scaled


def _problem(rng, n=7, P=300, K=9, nb=2):
    A = scipy.sparse.random(P, K, density=0.1, random_state=rng, format="csc")
    Ct = rng.normal(size=(n, K)) * 5
    b = rng.normal(size=(P, nb)) if nb else None
    ft = rng.normal(size=(n, nb)) if nb else None
    Y = (rng.normal(size=(n, P)) * 3 + 500).astype(np.float32)
    return A, Ct, b, ft, Y


@pytest.mark.parametrize("nb", [0, 1, 2, 3])
@pytest.mark.parametrize("with_y", [False, True])
def test_frames_matches_reference(rng, nb, with_y):
    A, Ct, b, ft, Y = _problem(rng, nb=nb)
    y = Y if with_y else None
    out = np.empty(Y.shape)
    frames(out, A, Ct, b, ft, y)
    assert_close_scaled(out, frames_reference(A, Ct, b, ft, y), rtol=1e-12)


def test_frames_reads_transposed_movie_frames(rng):
    A, Ct, b, ft, Y = _problem(rng, P=20 * 15)
    # a frame-major memmap's frames are transposed views; the output is still C-ordered
    Yt = np.ascontiguousarray(Y.reshape(-1, 20, 15).transpose(0, 2, 1)).transpose(0, 2, 1)
    out = np.empty(Y.shape)
    frames(out, A, Ct, b, ft, Yt)
    assert_close_scaled(out, frames_reference(A, Ct, b, ft, Y), rtol=1e-12)


def _frames_in(Y: np.ndarray, layout: str) -> np.ndarray:
    """``(n, h, w)`` frames stored frame by frame in C or Fortran (frame-major memmap) order."""
    if layout == "C":
        return np.ascontiguousarray(Y)
    return np.ascontiguousarray(Y.transpose(0, 2, 1)).transpose(0, 2, 1)


# 2 bands split mid-row; a row longer than a band; rows and columns not multiples of 8; tiny
@pytest.mark.parametrize("hw", [(181, 191), (3, 40000), (40000, 1), (37, 1000), (8, 8), (5, 3)])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("nb", [0, 1, 2, 3])
def test_fused_residual_frames_match_reference_and_the_plain_path(rng, hw, layout, nb):
    n, P = 3, hw[0] * hw[1]
    A, Ct, b, ft, Y = _problem(rng, n=n, P=P, K=6, nb=nb)
    A = scipy.sparse.random(P, 6, density=0.05, random_state=rng, format="csc")  # both bands
    Yf = _frames_in(Y.reshape(n, *hw), layout)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        fused_out = np.empty((n, P), dtype)
        frames(fused_out, A, Ct, b, ft, Yf)  # 2D frames: the fused, band-by-band kernel
        assert_close_scaled(fused_out, frames_reference(A, Ct, b, ft, Y), rtol=rtol)
        plain = np.empty((n, P), dtype)
        frames(plain, A, Ct, b, ft, Y.reshape(n, P))  # flat rows: frame-by-frame path
        np.testing.assert_array_equal(fused_out, plain)  # same arithmetic, bitwise


@pytest.mark.parametrize("layout", ["C", "F"])
def test_residual_bands_compose(rng, layout):
    # bands are independent: threads sharing a frame write disjoint parts of the same output
    hw = (181, 543)
    A, Ct, b, ft, Y = _problem(rng, n=2, P=hw[0] * hw[1], K=6)
    Yf = _frames_in(Y.reshape(2, *hw), layout)
    whole = np.empty(Y.shape)
    frames(whole, A, Ct, b, ft, Yf)
    parts = np.full(Y.shape, np.nan)
    nbands = n_bands(Y.shape[1])
    assert nbands == 3
    for r in (range(1, 2), range(2, 3), range(0, 1)):
        residual_bands(parts, A, Ct, b, ft, Yf, r)
    np.testing.assert_array_equal(parts, whole)


def _pixel_major(Y: np.ndarray, T: int, t0: int) -> np.ndarray:
    """Frames ``t0 : t0 + n`` of ``Y`` (``(n, h, w)``) as views of a pixel-major ``(P, T)``
    movie in Fortran pixel order (a CaImAn order-C memmap), ``T >= t0 + n`` frames long."""
    n, h, w = Y.shape
    Yr = np.zeros((h * w, T), Y.dtype)
    Yr[:, t0 : t0 + n] = Y.reshape(n, -1, order="F").T
    frames_view = Yr.reshape(w, h, T).transpose(2, 1, 0)  # (T, h, w): a view, as _io gives
    return frames_view[t0 : t0 + n]


@pytest.mark.parametrize("n", [1, 5, 8, 13, 40])
@pytest.mark.parametrize("hw", [(181, 191), (37, 1000), (5, 3), (8, 64)])
def test_gather_pixel_major_matches_numpy(rng, n, hw):
    Y = rng.normal(size=(n, *hw)).astype(np.float32)
    Ypm = _pixel_major(Y, T=n + 11, t0=7)
    assert pixel_major(Ypm, hw[0] * hw[1])
    np.testing.assert_array_equal(Ypm, Y)  # the views are right
    P = hw[0] * hw[1]
    z = np.full((n, hw[1], hw[0]), np.nan, np.float32)
    cuts = sorted({0, P // 3, P // 3 + 513, P} & set(range(P + 1)))  # threads' pixel shares
    for a, b in itertools.pairwise(cuts):
        gather_pixel_major(z, Ypm, range(a, b))
    np.testing.assert_array_equal(z.transpose(0, 2, 1), Y)


def test_pixel_major_recognises_only_pixel_major_frames(rng):
    Y = rng.normal(size=(4, 6, 5)).astype(np.float32)
    assert pixel_major(_pixel_major(Y, T=9, t0=2), 30)
    assert not pixel_major(Y, 30)  # C-ordered frames
    assert not pixel_major(np.ascontiguousarray(Y.transpose(0, 2, 1)).transpose(0, 2, 1), 30)
    assert not pixel_major(_pixel_major(Y, T=9, t0=2)[:, 1:4], 15)  # a crop of rows
    assert not pixel_major(_pixel_major(Y, T=9, t0=2)[:, :, ::2], 18)  # every other column
    assert not pixel_major(_pixel_major(Y, T=9, t0=2)[::2], 30)  # every other frame
    # every other row still is (pixels twice as far apart): gathered right
    Ys = _pixel_major(Y, T=9, t0=2)[:, ::2]
    assert pixel_major(Ys, 15)
    z = np.empty((4, 5, 3), np.float32)
    gather_pixel_major(z, Ys, range(15))
    np.testing.assert_array_equal(z.transpose(0, 2, 1), Y[:, ::2])


@pytest.mark.parametrize("nb", [0, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pixel_major_residuals_equal_the_plain_path_bitwise(rng, nb, dtype):
    # 40 frames: two gathered blocks; 181 x 191 pixels: two bands, split mid-row
    n, hw = 40, (181, 191)
    P = hw[0] * hw[1]
    A, Ct, b, ft, Y = _problem(rng, n=n, P=P, K=6, nb=nb)
    A = _blobs(rng, P, 6)
    Ypm = _pixel_major(Y.reshape(n, *hw), T=n + 3, t0=2)
    got = np.empty((n, P), dtype)
    frames(got, A, Ct, b, ft, Ypm)
    plain = np.empty((n, P), dtype)
    frames(plain, A, Ct, b, ft, Y)  # flat rows: the frame-by-frame path
    np.testing.assert_array_equal(got, plain)


@pytest.mark.parametrize("ydtype", [np.uint16, np.int16, np.uint8, ">f4", np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "pixel-major"])
def test_integer_and_foreign_endian_movies_take_every_path(rng, ydtype, layout):
    # TIFF movies are often uint16 (and HDF5 ones may be big-endian): every frame path
    # converts them exactly as the plain path does
    n, hw = 9, (37, 45)
    P = hw[0] * hw[1]
    A, Ct, b, ft, Y = _problem(rng, n=n, P=P, K=5)
    Y = (rng.random((n, P)) * 200 - (50 if np.dtype(ydtype).kind == "i" else 0)).astype(ydtype)
    frames3 = Y.reshape(n, *hw)
    if layout == "pixel-major":
        Yl = _pixel_major(frames3, T=n + 2, t0=1)
    else:
        Yl = _frames_in(frames3, layout)
    for dtype in (np.float64, np.float32):
        got = np.empty((n, P), dtype)
        frames(got, A, Ct, b, ft, Yl)
        plain = np.empty((n, P), dtype)
        frames(plain, A, Ct, b, ft, Y)  # flat rows: the frame-by-frame path
        np.testing.assert_array_equal(got, plain)
    ref = frames_reference(A, Ct, b, ft, Y.astype(np.float64))
    assert_close_scaled(got, ref, rtol=1e-5)


def _blobs(rng, P, K):
    """CSC footprints of contiguous pixel runs of every length 1..40 (the kernels add runs as
    masked vectors of 8: 1, 2 or more vectors, partial last ones), some crossing the
    32768-pixel band edges, some overlapping."""
    A = scipy.sparse.lil_matrix((P, K))
    for k in range(K):
        for _ in range(4):
            n = int(rng.integers(1, 41))
            s = int(rng.integers(0, P - n)) if k % 3 else 32768 * int(rng.integers(1, 3)) - n // 2
            s = min(s, P - n)  # (small frames: the band edge is past the end)
            A[s : s + n, k] = rng.uniform(0.1, 1.0, n)
    return A.tocsc()


@pytest.mark.parametrize("nb", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_model_frames_are_negated_residuals_of_a_zero_movie(rng, nb, dtype):
    # two independent code paths: the band-by-band model kernel (no movie) and the
    # frame-by-frame residual path; y = 0 gives -(b f) - A c, which rounds exactly as the
    # negation of b f + A c (round-to-nearest is symmetric), so they agree bitwise
    n, P, K = 4, 70001, 30
    A = _blobs(rng, P, K)
    Ct = rng.normal(size=(n, K)) * 5
    Ct[1, 3] = 0.0  # a zero trace is skipped
    b = rng.normal(size=(P, nb)) if nb else None
    ft = rng.normal(size=(n, nb)) if nb else None
    model = np.empty((n, P), dtype)
    frames(model, A, Ct, b, ft)
    res = np.empty((n, P), dtype)
    frames(res, A, Ct, b, ft, np.zeros((n, P), dtype))  # flat frames: the frame-by-frame path
    np.testing.assert_array_equal(model, -res)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert_close_scaled(model, frames_reference(A, Ct, b, ft, None), rtol=rtol)


@pytest.mark.parametrize("nb", [0, 2, 4])
def test_residual_moments_matches_numpy(rng, nb):
    A, Ct, b, ft, Y = _problem(rng, n=13, P=9000, nb=nb)  # > one 4096-pixel tile
    Y[:, 5] = 7.0
    r = frames_reference(A, Ct, b, ft, Y)
    got = residual_moments(Y, prepare_moments(A, b), Ct, ft)
    assert got["n"] == 13
    assert_close_scaled(got["mean"], r.mean(0), rtol=1e-12)
    assert_close_scaled(got["m2"], ((r - r.mean(0)) ** 2).sum(0), rtol=1e-10)
    # the reference sums in another order (a dense product): equal to rounding
    assert_close_scaled(got["min"], r.min(0), rtol=1e-12)
    assert_close_scaled(got["max"], r.max(0), rtol=1e-12)


def test_residual_moments_constant_pixel_has_zero_m2(rng):
    A = scipy.sparse.csc_matrix((50, 3))
    Y = np.full((6, 50), 1234.567, np.float32)
    got = residual_moments(Y, prepare_moments(A, None), np.zeros((6, 3)), None)
    assert not got["m2"].any()
    np.testing.assert_array_equal(got["mean"], np.float64(np.float32(1234.567)))


def test_moments_state_folds_blocks_like_one_pass(rng):
    # 70 frames > the kernel's 32-frame sub-blocks, folded in as three uneven blocks
    A, Ct, b, ft, Y = _problem(rng, n=70, P=5000, nb=2)
    op = prepare_moments(A, b)
    state = MomentsState(op)
    for s, e in ((0, 3), (3, 40), (40, 70)):
        state.update(Y[s:e], Ct[s:e], ft[s:e])
    got = state.result()
    r = frames_reference(A, Ct, b, ft, Y)
    assert got["n"] == 70
    assert_close_scaled(got["mean"], r.mean(0), rtol=1e-12)
    assert_close_scaled(got["m2"], ((r - r.mean(0)) ** 2).sum(0), rtol=1e-10)
    np.testing.assert_array_equal(got["min"], residual_moments(Y, op, Ct, ft)["min"])
    np.testing.assert_array_equal(got["max"], residual_moments(Y, op, Ct, ft)["max"])


def test_moments_state_without_frames_is_empty(rng):
    A, _, b, _, _ = _problem(rng, P=40)
    got = MomentsState(prepare_moments(A, b)).result()
    assert got["n"] == 0 and not got["mean"].any()


def test_footprint_runs_cover_every_entry_once(rng):
    dense = scipy.sparse.random(400, 12, density=0.2, random_state=rng).toarray()
    dense[50:60, 3] = 1.0  # a long run
    A = scipy.sparse.csc_matrix(dense)
    R = footprint_runs(A)
    assert footprint_runs(A) is R  # kept on the matrix
    rebuilt = np.zeros(A.shape)
    for r in range(len(R.start)):
        s, o, n = R.start[r], R.off[r], R.length[r]
        rebuilt[s : s + n, R.comp[r]] += R.data[o : o + n]
    np.testing.assert_array_equal(rebuilt, A.toarray())
    assert R.length.max() >= 10 and len(R.start) < A.nnz


def test_footprint_runs_split_at_bands(rng, monkeypatch):
    import caiman_dask._frame_kernels as kernels

    monkeypatch.setattr(kernels, "_BAND", 64)  # (compiled kernels keep theirs; runs only)
    dense = np.zeros((300, 3))
    dense[60:70, 0] = 1.0  # crosses the band edge at 64
    dense[10:20, 2] = 2.0
    dense[100:140, 1] = 3.0
    R = footprint_runs(scipy.sparse.csc_matrix(dense))
    assert list(R.bptr) == [0, 2, 4, 5, 5, 5]  # groups: (0, 0) (0, 2) (1, 0) (1, 1) (2, 1)
    runs = [(int(a), int(b), int(c)) for a, b, c in zip(R.start, R.length, R.comp, strict=True)]
    assert runs == [(60, 4, 0), (10, 10, 2), (64, 6, 0), (100, 28, 1), (128, 12, 1)]
