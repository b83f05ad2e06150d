"""``cd.pnr_images``: CaImAn's CNMF-E summary images (``correlation_pnr``), out of core.

Every result is compared with :func:`reference_pnr`, a dense NumPy float64 version written
here from CaImAn's documented definitions (kernel, noise, thresholded correlation), and, on
frozen movies, with the output of CaImAn 1.12.1's own ``correlation_pnr``
(``tests/data/pnr_caiman.npz``, see :func:`test_matches_caimans_output`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import caiman_dask as cd
from caiman_dask._summary_kernels import noise_frames, pnr_kernel

from .conftest import MMAP_1P_C

DATA = Path(__file__).parent / "data"

# ------------------------------------------------------------------ the dense reference


def reference_kernel(gsig: float, center_psf: bool = True) -> np.ndarray:
    """CaImAn's filter for ``gSig``, from its definition (float32 arithmetic, as CaImAn)."""
    ksize = 2 * int(2 * gsig) + 1
    x = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(x**2) / (2 * gsig**2))
    g = (g / g.sum()).astype(np.float32)  # cv2.getGaussianKernel(ksize, gsig, CV_32F)
    if not center_psf:
        return np.outer(g.astype(np.float64), g.astype(np.float64))
    psf = g[:, None] * g[None, :]  # float32 products
    keep = psf >= psf[0].max()
    psf = psf - psf[keep].mean(dtype=np.float32)
    psf[~keep] = 0
    return psf.astype(np.float64)


def reference_pnr(Y: np.ndarray, gsig: float | None, center_psf: bool = True):
    """Dense float64 ``(corr, pnr)`` of ``Y`` (T, d1, d2), straight from the definitions."""
    Y = np.asarray(Y, dtype=np.float64)
    T, d1, d2 = Y.shape
    if gsig is None:
        F = Y.copy()
    else:
        k = reference_kernel(gsig, center_psf)
        F = np.stack([scipy.ndimage.correlate(f, k, mode="nearest") for f in Y])
    F -= F.mean(axis=0)
    # noise: get_noise_fft(noise_method='mean'), with its 3072-frame rule
    if T > 3072:
        mid = T // 2
        sel = np.r_[1:1025, mid - 512 : mid + 512, T - 1024 : T]
    else:
        sel = np.arange(T)
    N = len(sel)
    ff = np.arange(0, 0.5 + 1.0 / N, 1.0 / N)
    band = np.flatnonzero((ff > 0.25) & (ff <= 0.5))
    X = np.fft.rfft(F[sel], axis=0)[band]
    sn = np.sqrt(np.mean(np.abs(X) ** 2, axis=0) / N)
    with np.errstate(divide="ignore", invalid="ignore"):
        pnr = F.max(axis=0) / sn
    pnr[sn == 0] = 0
    pnr[pnr < 0] = 0
    # correlation image of the movie thresholded at 3 noise levels
    with np.errstate(divide="ignore", invalid="ignore"):
        z = F / sn
    z[:, sn == 0] = 0
    z[z < 3] = 0
    z -= z.mean(axis=0)
    sd = z.std(axis=0)
    u = np.zeros_like(z)
    np.divide(z, sd, out=u, where=sd > 0)
    total = np.zeros((d1, d2))
    count = np.zeros((d1, d2))
    for i in range(d1):
        for j in range(d2):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if (di or dj) and 0 <= a < d1 and 0 <= b < d2:
                        total[i, j] += np.mean(u[:, i, j] * u[:, a, b])
                        count[i, j] += 1
    return total / count, pnr


def onep_movie(T: int, dims: tuple[int, int], seed: int = 0, n_cells: int = 5) -> np.ndarray:
    """A small 1p-like uint16 movie: a bright smooth drifting background, Gaussian cells
    with sparse calcium transients, shot-like noise."""
    rng = np.random.default_rng(seed)
    d1, d2 = dims
    yy, xx = np.mgrid[:d1, :d2]
    bg = 900 + 400 * np.exp(-((yy - d1 / 2) ** 2 + (xx - d2 / 3) ** 2) / (2 * (d1 / 2) ** 2))
    Y = bg[None] * (1 + 0.05 * np.sin(np.arange(T) / 40))[:, None, None]
    for _ in range(n_cells):
        cy, cx = rng.uniform(2, d1 - 2), rng.uniform(2, d2 - 2)
        fp = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2))
        spikes = (rng.random(T) < 0.03) * rng.uniform(60, 150, T)
        trace = np.convolve(spikes, 0.9 ** np.arange(40))[:T]
        Y += fp[None] * trace[:, None, None]
    Y += rng.normal(size=Y.shape) * np.sqrt(Y) * 0.6
    return np.round(Y).astype(np.uint16)


def assert_images(got, ref, *, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and g.dtype == np.float64
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    return onep_movie(300, (24, 20), seed=1)


# ------------------------------------------------------------------ definitions


def test_kernel_is_caimans():
    """The kernel's values as OpenCV 4.11 gives them (``getGaussianKernel(13, 3, CV_32F)``
    and CaImAn's centring), recorded from a run of CaImAn's code."""
    k = pnr_kernel(3)
    assert k.weights.shape == (13, 13)
    np.testing.assert_array_equal(k.weights, reference_kernel(3))
    assert int((k.weights != 0).sum()) == 113  # the disk of taps >= max(psf[0])
    assert k.weights[6, 6] == np.float32(0.010657588)
    assert k.weights[0, 6] == np.float32(-0.005576712)
    assert k.weights[0, 5] == 0.0
    assert abs(k.weights.sum()) < 1e-6
    assert pnr_kernel(2.5).weights.shape == (11, 11)  # ksize = 2 * int(2 * gSig) + 1


def test_noise_frames_follow_caimans_segments():
    assert noise_frames(3072).tolist() == list(range(3072))
    for T in (3073, 3500, 10001):
        f = noise_frames(T)
        mid = T // 2
        assert f.tolist() == [*range(1, 1025), *range(mid - 512, mid + 512), *range(T - 1024, T)]


@pytest.mark.parametrize(("dims", "gsig"), [((24, 20), 3), ((17, 23), 2), ((15, 16), 4)])
def test_matches_reference(dims, gsig):
    Y = onep_movie(250, dims, seed=gsig)
    assert_images(cd.pnr_images(Y, gsig), reference_pnr(Y, gsig))


def test_long_movie_uses_three_segments():
    """T > 3072: the noise comes from CaImAn's three 1024-frame segments only."""
    Y = onep_movie(3500, (12, 10), seed=3, n_cells=2)
    corr, pnr = cd.pnr_images(Y, 2)
    assert_images((corr, pnr), reference_pnr(Y, 2))
    # frames outside the segments do not change the noise: scale them and pnr follows max
    Y2 = Y.astype(np.float64)
    Y2[1100:1200] *= 1.0001
    _, pnr2 = cd.pnr_images(Y2, 2)
    assert_images((pnr2,), (reference_pnr(Y2, 2)[1],))


@pytest.mark.parametrize("center_psf", [True, False])
def test_center_psf_and_no_filter(movie, center_psf):
    assert_images(
        cd.pnr_images(movie, 2.5, center_psf=center_psf), reference_pnr(movie, 2.5, center_psf)
    )


def test_no_filter(movie):
    assert_images(cd.pnr_images(movie, None), reference_pnr(movie, None))


def test_matches_caimans_output():
    """Against CaImAn 1.12.1's own ``correlation_pnr(Y, gSig, swap_dim=False)`` (OpenCV
    4.11, float32 throughout), run on these :func:`onep_movie` movies; its float32 rounding
    bounds the differences."""
    with np.load(DATA / "pnr_caiman.npz") as z:
        refs = {k: z[k] for k in z.files}
    for name, (T, dims, seed, gsig) in {
        "short": (400, (26, 30), 4, 3),
        "long": (3300, (14, 12), 5, 2),
    }.items():
        Y = onep_movie(T, dims, seed=seed)
        corr, pnr = cd.pnr_images(Y, gsig)
        np.testing.assert_allclose(pnr, refs[f"{name}_pnr"], rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(corr, refs[f"{name}_corr"], rtol=0, atol=2e-4)


# ------------------------------------------------------------------ windows and inputs


@pytest.mark.parametrize(
    "frames",
    [slice(20, 260), slice(None, None, 2), [5, 3, 1, 7, 9, 2, 40, 41, 42], "mask"],
    ids=["slice", "step", "indices", "mask"],
)
def test_frames_window(movie, frames):
    if isinstance(frames, str):
        frames = np.arange(len(movie)) % 3 != 0
    assert_images(cd.pnr_images(movie, 3, frames=frames), reference_pnr(movie[frames], 3))


def _write_memmap(path: Path, Y: np.ndarray, order: str) -> Path:
    T, d1, d2 = Y.shape
    name = path / f"mov_d1_{d1}_d2_{d2}_d3_1_order_{order}_frames_{T}.mmap"
    Yr = Y.astype(np.float32).reshape(T, d1 * d2, order="F").T  # CaImAn's (P, T)
    mm = np.memmap(name, np.float32, "w+", shape=Yr.shape, order=order)
    mm[:] = Yr
    mm.flush()
    del mm
    return name


def test_inputs_agree(movie, tmp_path):
    """TIFF, CaImAn memmaps of both orders, zarr, NumPy, dask (ragged chunks), a
    MovieSource and a lazy raw movie all give the same images."""
    ref = cd.pnr_images(movie, 3)
    tifffile.imwrite(tmp_path / "mov.tif", movie)
    z = zarr.create_array(tmp_path / "mov.zarr", shape=movie.shape, chunks=(64, 24, 20),
                          dtype=movie.dtype)  # fmt: skip
    z[:] = movie
    inputs = {
        "tiff": tmp_path / "mov.tif",
        "memmap C": _write_memmap(tmp_path, movie, "C"),
        "memmap F": _write_memmap(tmp_path, movie, "F"),
        "zarr": tmp_path / "mov.zarr",
        "float32": movie.astype(np.float32),
        "dask": da.from_array(movie, chunks=((7, 100, 150, 43), (12, 12), (20,))),
        "source": cd.open_movie(movie, frame_chunk=33),
    }
    for name, src in inputs.items():
        got = cd.pnr_images(src, 3)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("order", ["C", "F"])
def test_long_memmaps(tmp_path, order):
    """T > 3072 from memmaps (frames stored by column or by pixel): the noise segments cut
    time chunks into short pieces that dask copies to C order, so orientations mix."""
    Y = onep_movie(3500, (12, 10), seed=6, n_cells=2)
    path = _write_memmap(tmp_path, Y, order)
    got = cd.pnr_images(cd.open_movie(path, frame_chunk=512), 2)
    assert_images(got, cd.pnr_images(Y, 2), rtol=1e-10, atol=1e-12)


def test_lazy_movie():
    m = cd.synthetic(dims=(24, 20), T=200, K=5, seed=2, ring_ssub=2)
    Y = cd.raw(m).data.compute()
    assert_images(cd.pnr_images(cd.raw(m), 3), reference_pnr(Y, 3))
    res = cd.residuals(m)
    assert_images(cd.pnr_images(res, 3), reference_pnr(res.data.compute(), 3))


def test_noise_tiles_do_not_change_the_result(movie):
    """Narrow noise tiles (one column each; halos read from the neighbours) = one tile."""
    one = cd.pnr_images(movie, 3)
    for tile_bytes in (1, 8 * 300 * 24 * 3):
        got = cd.pnr_images(movie, 3, tile_bytes=tile_bytes)
        assert_images(got, one, rtol=1e-12, atol=1e-13)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    T=st.integers(2, 40),
    d1=st.integers(1, 9),
    d2=st.integers(2, 9),
    chunk=st.integers(1, 40),
    gsig=st.sampled_from([0.5, 1, 2]),
    seed=st.integers(0, 2**16),
)
def test_chunking_does_not_matter(T, d1, d2, chunk, gsig, seed):
    Y = np.random.default_rng(seed).normal(10, 3, size=(T, d1, d2))
    Y[:, 0, 0] += np.arange(T) % 5 == 0  # some events above threshold
    ref = reference_pnr(Y, gsig)
    got = cd.pnr_images(da.from_array(Y, chunks=(chunk, d1, d2)), gsig)
    assert_images(got, ref, rtol=1e-8, atol=1e-9)


def test_distributed_same_numbers(movie):
    distributed = pytest.importorskip("distributed")
    ref = cd.pnr_images(movie, 3)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster),
    ):  # fmt: skip
        got = cd.pnr_images(movie, 3)
    assert_images(got, ref, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------ edge cases and errors


def test_constant_pixels_have_zero_noise():
    Y = np.full((60, 10, 12), 100.0)
    corr, pnr = cd.pnr_images(Y, 2)
    assert (pnr == 0).all() and (corr == 0).all()


def test_nonfinite_values_are_reported(movie):
    Y = movie.astype(np.float64)
    Y[40, 10, 8] = np.nan
    with pytest.warns(cd.NaNWarning, match="1 non-finite"):
        corr, pnr = cd.pnr_images(Y, 2)
    support = reference_kernel(2) != 0
    hit = np.zeros(Y.shape[1:], bool)
    hit[10, 8] = True
    reached = scipy.ndimage.binary_dilation(hit, support)
    assert np.array_equal(np.isnan(pnr), reached)
    assert np.array_equal(np.isnan(corr), scipy.ndimage.binary_dilation(reached, np.ones((3, 3))))
    assert np.isfinite(pnr[~reached]).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gSig": 0}, "gSig=None"),
        ({"gSig": -2}, ">= 0.5"),
        ({"gSig": 0.3}, "single tap"),
        ({"gSig": (3, 4)}, "equal numbers"),
        ({"gSig": (3, 3, 3)}, "pair"),
        ({"gSig": "3"}, "must be a number"),
        ({"gSig": True}, "must be a number"),
        ({"gSig": 3, "frames": []}, "frames"),
        ({"gSig": 3, "frames": slice(5, 5)}, "selects no frames"),
        ({"gSig": 3, "frames": [0]}, "at least 2 frames"),
        ({"gSig": 3, "frames": slice(0, 999)}, "out of range"),
        ({"gSig": 3, "center_psf": "yes"}, "center_psf"),
        ({"gSig": 3, "tile_bytes": 0}, "tile_bytes"),
    ],
)
def test_bad_options(movie, kwargs, match):
    with pytest.raises(cd.OptionError, match=match):
        cd.pnr_images(movie, **kwargs)


def test_bad_movies():
    with pytest.raises(cd.OptionError, match="2D movies only"):
        cd.pnr_images(np.zeros((10, 4, 5, 6)), 2)
    with pytest.raises(cd.ShapeMismatchError, match=r"\(T, d1, d2\)"):
        cd.pnr_images(np.zeros((10, 20)), 2)
    with pytest.raises(cd.OptionError, match="must be a movie"):
        cd.pnr_images(object(), 2)
    with pytest.raises(cd.OptionError, match="real numbers"):
        cd.pnr_images(np.zeros((10, 4, 5), complex), 2)
    with pytest.raises(cd.MissingFileError):
        cd.pnr_images("/nonexistent/movie.tif", 2)


# ------------------------------------------------------------------ CaImAn's 1p fixture


def test_caiman_1p_fixture(caiman_dir):
    """The CNMF-E fixture: TIFF and memmap agree, and every accepted component's footprint
    peak passes the seed thresholds CaImAn initialised with (min_corr 0.8, min_pnr 6 — on
    tsub=2 data CaImAn scales min_pnr by sqrt(2), the noise drop of averaging 2 frames, so
    6 is the full-rate equivalent)."""
    mm = caiman_dir / MMAP_1P_C
    corr, pnr = cd.pnr_images(mm, 3)
    corr_t, pnr_t = cd.pnr_images(caiman_dir / "mov_1p.tif", 3)  # memmap = TIFF + 0.0001
    np.testing.assert_allclose(pnr_t, pnr, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(corr_t, corr, rtol=0, atol=1e-9)
    Y = cd.open_movie(mm).data.compute()
    assert_images((corr, pnr), reference_pnr(Y, 3))
    m = cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=mm)
    A = m.A.compute() if hasattr(m.A, "compute") else m.A
    A = np.asarray(A.todense() if hasattr(A, "todense") else A)
    good = np.asarray(m.idx_components)
    assert len(good) == 16
    for k in good:
        i, j = np.unravel_index(A[:, k].reshape(m.dims, order="F").argmax(), m.dims)
        assert pnr[i, j] >= 6 and corr[i, j] >= 0.8, (k, pnr[i, j], corr[i, j])


# ------------------------------------------------------------------ bounded memory

_MEMORY_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import numpy as np
    import caiman_dask as cd

    def anon_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    path = sys.argv[1]
    movie = cd.open_movie(path, frame_chunk=64)
    cd.pnr_images(movie, 2, frames=slice(0, 200), tile_bytes=2**20)  # compile the kernels
    peak = [anon_mb()]
    base = peak[0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], anon_mb())
            time.sleep(0.005)

    t = threading.Thread(target=watch)
    t.start()
    corr, pnr = cd.pnr_images(movie, 2, tile_bytes=16 * 2**20)
    stop.set()
    t.join()
    assert np.isfinite(pnr).all()
    print(peak[0] - base)
    """
)


@pytest.mark.slow
def test_memory_stays_bounded(tmp_path):
    """A 400 MB float32 movie (its float64 filtered copy: 800 MB, CaImAn holds about three
    float32 copies) in a child process whose anonymous memory grows by well under that."""
    T, d1, d2 = 6000, 128, 128
    path = tmp_path / f"big_d1_{d1}_d2_{d2}_d3_1_order_F_frames_{T}.mmap"
    mm = np.memmap(path, np.float32, "w+", shape=(T, d1 * d2))
    rng = np.random.default_rng(0)
    for a in range(0, T, 500):
        mm[a : a + 500] = 100 + rng.normal(size=(min(500, T - a), d1 * d2)).astype(np.float32)
    mm.flush()
    del mm
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(path)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    grew = float(out.stdout.strip().splitlines()[-1])
    movie_mb = T * d1 * d2 * 4 / 2**20
    assert grew < 150 < movie_mb / 2, (grew, movie_mb)


def test_no_warning_on_clean_input(movie):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cd.pnr_images(movie, 3)
    with dask.config.set(scheduler="sync"):
        assert_images(cd.pnr_images(movie, 3), cd.pnr_images(movie, 3))
