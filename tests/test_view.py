"""The lazy viewer: exact rendered pixels, contours, GIF / MP4 files, widgets, array protocols."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import imageio.v3 as iio
import imageio_ffmpeg
import ipywidgets
import numpy as np
import pytest
from PIL import Image

import caiman_dask as cd
from caiman_dask import _view as V
from caiman_dask._encode import palette_frame
from caiman_dask._movie import Movie
from caiman_dask._render import footprint_contours, gray_levels, render_frame
from caiman_dask.testing import dense_reference, raise_if_dask_computes

GOOD = "good"


# ---------------------------------------------------------------------------------------------
# fixtures: a small synthetic model and its dense float64 movies
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> cd.CNMFModel:
    return cd.synthetic(dims=(24, 30), T=20, K=5, seed=1)


@pytest.fixture(scope="module")
def dense(model: cd.CNMFModel) -> dict[str, np.ndarray]:
    """Dense float64 movies by brute force (CaImAn's conventions, testing.dense_reference)."""
    Y = np.asarray(model.Y.compute(), dtype=np.float64)
    rcm_all = dense_reference(model, "rcm")
    rcm_good = dense_reference(model, "rcm", components=GOOD)
    rcb = dense_reference(model, "rcb")
    return {
        "raw": Y,
        "rcm": rcm_all,
        "rcm_good": rcm_good,
        "rcb": rcb,
        "rcm_good+rcb": rcm_good + rcb,
        "residuals": dense_reference(model, "residuals"),
        "residuals_good": Y - rcm_good - rcb,
    }


def expected_frame(
    images: list[np.ndarray],
    limits: list[tuple[float, float]],
    *,
    contours: np.ndarray | None = None,
    scale: int = 1,
    gap: int = 2,
    color: tuple[int, int, int] = (255, 0, 0),
) -> np.ndarray:
    """Independent recomputation of the documented rendering (loops, kron, hstack)."""
    cols = []
    for p, (im, (lo, hi)) in enumerate(zip(images, limits, strict=True)):
        g = np.rint(np.clip((im - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
        rgb = np.dstack([g, g, g])
        if contours is not None:
            for i, j in zip(*np.nonzero(contours), strict=True):
                rgb[i, j] = color
        rgb = np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8))
        if p:
            cols.append(np.zeros((rgb.shape[0], gap, 3), dtype=np.uint8))
        cols.append(rgb)
    return np.hstack(cols)


def dense_limits(*movies: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x.min()), float(x.max())) for x in movies]


def brute_force_contours(model: cd.CNMFModel, components, threshold: float = 0.2) -> np.ndarray:
    """Footprint boundaries pixel by pixel from the dense Fortran-order ``A``."""
    d1, d2 = model.dims
    A = np.asarray(model.A.compute().todense(), dtype=np.float64)
    out = np.zeros((d1, d2), dtype=bool)
    for k in model.components(components):
        img = A[:, k].reshape((d1, d2), order="F")
        fp = img > threshold * img.max()
        for i in range(d1):
            for j in range(d2):
                if not fp[i, j]:
                    continue
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    ii, jj = i + di, j + dj
                    if not (0 <= ii < d1 and 0 <= jj < d2) or not fp[ii, jj]:
                        out[i, j] = True
    return out


# ---------------------------------------------------------------------------------------------
# the array protocols of fastplotlib's ImageWidget and napari
# ---------------------------------------------------------------------------------------------

PROTOCOL_MOVIES = {
    "rcm": (lambda m: cd.rcm(m), "rcm"),
    "rcb": (lambda m: cd.rcb(m), "rcb"),
    "residuals": (lambda m: cd.residuals(m), "residuals"),
    "raw": (lambda m: cd.raw(m), "raw"),
    "rcm+rcb (viewer)": (lambda m: V.view(m, GOOD).movies[1], "rcm_good+rcb"),
    "residuals of a subset (viewer)": (lambda m: V.view(m, GOOD).movies[2], "residuals_good"),
}


@pytest.mark.parametrize("name", list(PROTOCOL_MOVIES))
def test_array_protocols(model, dense, name):
    build, ref_key = PROTOCOL_MOVIES[name]
    movie = build(model)
    ref = dense[ref_key]
    T, d1, d2 = ref.shape
    # napari layer data: dtype, shape, ndim, size, __getitem__
    assert isinstance(movie.shape, tuple)
    assert movie.shape == (T, d1, d2)
    assert all(type(s) is int for s in movie.shape)
    assert type(movie.ndim) is int and movie.ndim == 3
    assert type(movie.size) is int and movie.size == T * d1 * d2
    assert isinstance(movie.dtype, np.dtype) and movie.dtype.kind == "f"
    assert len(movie) == T
    # fastplotlib ImageWidget: numeric min / max (properties, Python floats, the true extremes)
    lo, hi = movie.min, movie.max
    assert type(lo) is float and type(hi) is float
    assert math.isclose(lo, ref.min(), rel_tol=1e-12, abs_tol=1e-12 * abs(ref).max())
    assert math.isclose(hi, ref.max(), rel_tol=1e-12, abs_tol=1e-12 * abs(ref).max())
    # __getitem__ as the viewers call it: ints, slices, tuples; NumPy out
    tol = {"rtol": 1e-6 if movie.dtype == np.float32 else 1e-10, "atol": 1e-5 * abs(ref).max()}
    requests = [
        (3, ref[3]),
        (np.int64(4), ref[4]),
        ((5, slice(None), slice(None)), ref[5]),
        ((slice(2, 6), slice(None), slice(None)), ref[2:6]),
        (slice(0, 20, 7), ref[0:20:7]),
        ((7, slice(3, 10), slice(None, None, 2)), ref[7, 3:10, ::2]),
        ((Ellipsis, 4), ref[..., 4]),
        (-1, ref[-1]),
    ]
    for key, want in requests:
        got = movie[key]
        assert type(got) is np.ndarray, key
        assert got.dtype == movie.dtype and got.shape == want.shape, key
        np.testing.assert_allclose(got, want, **tol)
    frame = np.asarray(movie[3])
    assert frame.shape == (d1, d2) and frame.flags.c_contiguous
    np.testing.assert_allclose(frame, ref[3], **tol)


# ---------------------------------------------------------------------------------------------
# the compositor
# ---------------------------------------------------------------------------------------------


def test_render_frame_pixels_match_dense_recomputation(model, dense):
    v = V.view(model, GOOD)
    assert v.names == ("raw", "rcm", "residuals")
    assert v.titles == ("raw", "rcm + background", "residuals")
    refs = [dense["raw"], dense["rcm_good+rcb"], dense["residuals_good"]]
    lims = dense_limits(*refs)
    for t in (0, 7, 19):
        got = v.frame(t)
        want = expected_frame([r[t] for r in refs], lims)
        assert got.dtype == np.uint8 and got.shape == (24, 3 * 30 + 2 * 2, 3)
        np.testing.assert_array_equal(got, want)
        # the pure function gives the same frame from the movies themselves
        np.testing.assert_array_equal(render_frame(v.movies, t), want)
    # the frame is not trivially constant
    assert len(np.unique(v.frame(7))) > 50


def test_render_frame_scale_gap_and_given_limits(model, dense):
    movies = [cd.rcm(model), cd.raw(model)]
    lims = [(0.0, 20.0), (50.0, 120.0)]
    got = render_frame(movies, 11, limits=lims, scale=3, gap=5)
    want = expected_frame([dense["rcm"][11], dense["raw"][11]], lims, scale=3, gap=5)
    assert got.shape == (72, 2 * 90 + 5, 3)
    np.testing.assert_array_equal(got, want)
    # one pair for every panel, and a dict by name in the viewer (others exact)
    both = render_frame(movies, 11, limits=(0.0, 100.0))
    np.testing.assert_array_equal(
        both, expected_frame([dense["rcm"][11], dense["raw"][11]], [(0.0, 100.0)] * 2)
    )
    v = V.view(model, panels=("rcm", "raw"), background=False, limits={"raw": (50.0, 120.0)})
    assert v.limits[1] == (50.0, 120.0)
    assert v.limits[0] == pytest.approx((dense["rcm"].min(), dense["rcm"].max()), rel=1e-12)
    # gray mapping edge cases: NaN and a constant panel are black
    g = gray_levels(np.array([np.nan, -1.0, 0.5, 2.0]), 0.0, 1.0)
    np.testing.assert_array_equal(g, [0, 0, 128, 255])  # rint(127.5) = 128 (half to even)
    np.testing.assert_array_equal(gray_levels(np.ones(3), 1.0, 1.0), [0, 0, 0])


def test_limits_are_the_exact_extremes(model, dense):
    v = V.view(model, GOOD, panels=("raw", "rcm", "residuals", "rcb"))
    refs = [dense["raw"], dense["rcm_good+rcb"], dense["residuals_good"], dense["rcb"]]
    for (lo, hi), ref in zip(v.limits, refs, strict=True):
        scale = np.abs(ref).max()
        assert lo == pytest.approx(ref.min(), abs=1e-12 * scale)
        assert hi == pytest.approx(ref.max(), abs=1e-12 * scale)
    # RCM + low-rank background: from the stacked factors, equal to a pass over its frames
    comb = v.movies[1]
    assert isinstance(comb, cd.Movie) and not comb.description.streaming
    streamed = comb.data.astype(np.float64)
    assert comb.min == pytest.approx(float(streamed.min().compute()), rel=1e-12)
    assert comb.max == pytest.approx(float(streamed.max().compute()), rel=1e-12)


def test_panels_add_up_to_raw(model):
    """``raw = rcm (+B) + residuals`` for any component selection (CaImAn's play_movie)."""
    for comps in ("all", GOOD, [1, 3]):
        v = V.view(model, comps)
        for t in (0, 13):
            raw, fit, res = (np.asarray(mv[t], dtype=np.float64) for mv in v.movies)
            np.testing.assert_allclose(fit + res, raw, rtol=0, atol=1e-9)
    # without background the middle panel is A·C alone
    v = V.view(model, GOOD, background=False)
    assert type(v.movies[1]) is cd.RCM


def test_contours_at_the_footprint_boundaries(model, dense):
    mask = footprint_contours(model, GOOD)
    np.testing.assert_array_equal(mask, brute_force_contours(model, GOOD))
    assert mask.sum() > 20
    np.testing.assert_array_equal(
        footprint_contours(model, [2], threshold=0.5), brute_force_contours(model, [2], 0.5)
    )
    assert not footprint_contours(model, []).any()
    v = V.view(model, GOOD, contours=True, contour_color=(0, 255, 64), scale=2)
    np.testing.assert_array_equal(v.contours, mask)
    refs = [dense["raw"], dense["rcm_good+rcb"], dense["residuals_good"]]
    got = v.frame(4)
    want = expected_frame(
        [r[4] for r in refs], dense_limits(*refs), contours=mask, scale=2, color=(0, 255, 64)
    )
    np.testing.assert_array_equal(got, want)
    # the contour colour appears exactly at the boundary blocks of each panel
    is_c = np.all(got == (0, 255, 64), axis=-1)
    for p in range(3):
        x0 = p * (2 * 30 + 2)
        np.testing.assert_array_equal(is_c[:, x0 : x0 + 60], np.kron(mask, np.ones((2, 2))) > 0)
    # contours of another selection than the RCM's
    v2 = V.view(model, "all", contours=[0])
    np.testing.assert_array_equal(v2.contours, brute_force_contours(model, [0]))


def test_3d_plane(dense):
    m3 = cd.synthetic(dims=(16, 20, 5), T=8, K=4, seed=2)
    v = V.view(m3, panels=("rcm",), background=False, plane=2, contours=True)
    ref = dense_reference(m3, "rcm")
    got = v.frame(3)
    want = expected_frame([ref[3, :, :, 2]], dense_limits(ref), contours=v.contours)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(cd.OptionError, match="plane"):
        V.view(m3, plane=9)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def test_gif_round_trip_is_exact(model, tmp_path):
    v = V.view(model, GOOD, contours=True, frames=slice(3, 15))
    path = v.save(tmp_path / "out.gif", fps=10, progress=False)
    assert path == tmp_path / "out.gif"
    back = iio.imread(path, index=None)
    want = np.stack([v.frame(t) for t in range(3, 15)])
    assert back.shape == want.shape  # 12 frames, (H, W, 3)
    np.testing.assert_array_equal(back[..., :3], want)
    assert iio.immeta(path)["duration"] == 100  # 10 fps, in ms
    assert [p.name for p in tmp_path.iterdir()] == ["out.gif"]  # no temporary left behind


def test_save_movie_function_gif(model, tmp_path):
    path = V.save_movie(
        model, tmp_path / "m.gif", [0, 2], frames=[1, 5, 9], panels=("rcm", "rcb"), progress=False
    )
    v = V.view(model, [0, 2], panels=("rcm", "rcb"))
    back = iio.imread(path, index=None)
    np.testing.assert_array_equal(back[..., :3], np.stack([v.frame(t) for t in (1, 5, 9)]))


def test_gif_palette_more_than_256_colours():
    gray = np.arange(256, dtype=np.uint8).repeat(4).reshape(32, 32)
    frame = np.dstack([gray] * 3)
    frame[0, :3] = (255, 0, 0)  # 256 gray levels (some pixels) + one colour = 257 colours
    frame[0, 3] = (0, 0, 255)
    index, palette = palette_frame(frame)
    assert len(palette) == 256
    back = palette[index]
    np.testing.assert_array_equal(back[0, :4], [(255, 0, 0)] * 3 + [(0, 0, 255)])
    diff = np.abs(back.astype(int) - frame).max(axis=-1)
    assert diff.max() == 1 and (diff > 0).sum() <= 8  # two rarest gray levels merged
    index, palette = palette_frame(frame[8:])  # fewer colours: exact
    np.testing.assert_array_equal(palette[index], frame[8:])


def read_mp4(path: Path) -> tuple[dict, list[np.ndarray]]:
    """Decode with imageio-ffmpeg's ffmpeg binary (its read_frames generator leaks pipes)."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    video = re.search(
        r"Video: (\w+).*?, (\w+)(?:\([^)]*\))?, (\d+)x(\d+).*?, ([\d.]+) fps", probe.stderr
    )
    assert video is not None, probe.stderr
    codec, pix_fmt, w, h, fps = video.groups()
    out = subprocess.run(
        [exe, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    )
    w, h = int(w), int(h)
    raw = np.frombuffer(out.stdout, np.uint8).reshape(-1, h, w, 3)
    meta = {"codec": codec, "pix_fmt": pix_fmt, "size": (w, h), "fps": float(fps)}
    return meta, list(raw)


def test_mp4_round_trip_is_close(model, tmp_path):
    # two panels and gap=1 make the width odd: the MP4 is padded with black to an even size
    kw = {"panels": ("raw", "rcm"), "gap": 1}
    v = V.view(model, GOOD, **kw)
    H, W, _ = v.frame_shape
    assert W % 2 == 1
    path = V.save_movie(
        model, tmp_path / "out.mp4", GOOD, frames=slice(2, 12), fps=15, progress=False, **kw
    )
    meta, frames = read_mp4(path)
    assert meta["size"] == (W + 1, H)
    assert meta["codec"] == "h264" and meta["pix_fmt"] == "yuv420p"
    assert meta["fps"] == pytest.approx(15)
    assert len(frames) == 10
    for t, got in zip(range(2, 12), frames, strict=True):
        diff = np.abs(got[:, :W].astype(np.int64) - v.frame(t))
        assert diff.mean() < 3.0, (t, diff.mean())
        assert np.abs(got[:, W:].astype(np.int64)).mean() < 3.0  # the black padding


def test_refuses_to_overwrite(model, tmp_path):
    path = tmp_path / "a.gif"
    path.write_bytes(b"precious")
    with pytest.raises(cd.MovieExistsError, match="overwrite=True") as info:
        V.save_movie(model, path, frames=slice(0, 2), progress=False)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, cd.CaimanDaskError)
    assert path.read_bytes() == b"precious"
    V.save_movie(model, path, frames=slice(0, 2), overwrite=True, progress=False)
    assert len(iio.imread(path, index=None)) == 2
    with pytest.raises(cd.OptionError, match=r"\.mp4 or \.gif"):
        V.save_movie(model, tmp_path / "a.avi", frames=slice(0, 2), progress=False)
    with pytest.raises(cd.OptionError, match="frames"):
        V.save_movie(model, tmp_path / "b.gif", frames=slice(5, 5), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]


# ---------------------------------------------------------------------------------------------
# widgets and laziness
# ---------------------------------------------------------------------------------------------


def _png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_image_widget_slider_updates_the_frame(model):
    v = V.view(model, GOOD, contours=True, exact_limits="wait")
    w = v.widget()
    assert isinstance(w, ipywidgets.VBox)
    assert isinstance(w.slider, ipywidgets.IntSlider)
    assert (w.slider.min, w.slider.max, w.slider.value) == (0, model.T - 1, 0)
    assert isinstance(w.display_widget, ipywidgets.Image)
    np.testing.assert_array_equal(_png_pixels(w.display_widget.value), v.frame(0))
    w.slider.value = 7
    assert w.current_frame == 7
    np.testing.assert_array_equal(_png_pixels(w.display_widget.value), v.frame(7))
    # a frame window: slider positions map to frames
    w2 = V.view(model, frames=slice(5, 15, 2)).widget()
    assert w2.slider.max == 4
    w2.slider.value = 3
    assert w2.current_frame == 11


def test_matplotlib_widget_slider_updates_imshow(model, capsys):
    v = V.view(model, GOOD, exact_limits="wait")
    w = v.widget(backend="matplotlib")
    assert w.slider.max == model.T - 1
    assert len(w.images) == 3
    assert [ax.get_title() for ax in w.figure.axes] == list(v.titles)
    for im, (lo, hi) in zip(w.images, v.limits, strict=True):
        assert im.get_clim() == (lo, hi)
    w.slider.value = 12
    assert w.current_frame == 12
    for im, mv in zip(w.images, v.movies, strict=True):
        np.testing.assert_array_equal(np.asarray(im.get_array()), mv[12])
    with pytest.raises(cd.OptionError, match="backend"):
        v.widget(backend="qt")
    capsys.readouterr()  # outside a kernel the Output widget prints the figure's repr


def test_only_the_displayed_frames_are_computed(model, monkeypatch):
    v = V.view(model, GOOD, contours=True, exact_limits="wait")
    w = v.widget()  # renders frame 0: limits and in-memory factors are ready now
    calls: list[tuple[str, list[int]]] = []
    original = Movie._frames

    def recording(self, times, crop):
        calls.append((type(self).__name__, [int(t) for t in times]))
        return original(self, times, crop)

    monkeypatch.setattr(Movie, "_frames", recording)
    with raise_if_dask_computes():
        w.slider.value = 11
        w.slider.value = 4
        frame = v.frame(9)
    assert frame.shape == v.frame_shape
    assert {tuple(ts) for _, ts in calls} == {(11,), (4,), (9,)}
    # each panel asked once per frame (plus the parts of the combined panels)
    assert sum(1 for name, _ in calls if name == "Raw") == 3


# ---------------------------------------------------------------------------------------------
# API, errors and optional dependencies
# ---------------------------------------------------------------------------------------------


def test_errors(model):
    with pytest.raises(cd.OptionError, match="panel 'denoised'"):
        V.view(model, panels=("raw", "denoised"))
    with pytest.raises(cd.OptionError, match="scale"):
        V.view(model, scale=0)
    with pytest.raises(cd.OptionError, match="limits"):
        V.view(model, limits=[(0, 1), (0, 1)])
    with pytest.raises(cd.OptionError, match="limits has keys"):
        V.view(model, limits={"rcb": (0, 1)})
    with pytest.raises(cd.ComponentError):
        V.view(model, [7])
    no_y = cd.from_arrays(
        model.A.compute(),
        model.C.compute(),
        b=model.b.compute(),
        f=model.f.compute(),
        dims=(24, 30),
    )
    assert V.view(no_y).names == ("rcm",)
    with pytest.raises(cd.ComponentError, match="movie Y"):
        V.view(no_y, panels=("raw",))


def test_missing_dependency_names_the_extra(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(cd.MissingDependencyError, match=r"caiman-dask\[viz\]") as info:
        V.save_movie(model, tmp_path / "x.mp4", frames=slice(0, 2), progress=False)
    assert isinstance(info.value, ImportError)
    assert not (tmp_path / "x.mp4").exists()


def test_import_does_not_need_the_viz_packages():
    code = (
        "import sys, caiman_dask, caiman_dask._view; "
        "bad = [m for m in ('matplotlib', 'ipywidgets', 'imageio', 'imageio_ffmpeg', 'PIL') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_public_api():
    for name in ("view", "save_movie", "render_frame", "footprint_contours", "Viewer"):
        assert getattr(cd, name) is getattr(V, name), name
    assert Path(V.__file__).name == "_view.py"
