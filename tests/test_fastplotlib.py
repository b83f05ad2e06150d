"""fastplotlib's ImageWidget shows our movies, exact limits, frame by frame, rendered headless.

Rendering uses wgpu on a software Vulkan driver (Mesa's lavapipe, Debian's
``mesa-vulkan-drivers``) through fastplotlib's offscreen canvas. The screenshot is compared to
the frame the movie returns, mapped through the same colormap and limits.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # headless: no display in tests or CI

import numpy as np
import pytest
from matplotlib import colormaps

import caiman_dask as cd
from caiman_dask import _fastplotlib as F
from caiman_dask._movie import Movie
from caiman_dask._view import PROVISIONAL_FRAMES
from caiman_dask.testing import raise_if_dask_computes


def _shows(widget, frame: np.ndarray, timeout: float = 30.0) -> bool:
    """Run fastplotlib's event loop (frames are fetched by its tasks) until the widget's image
    holds ``frame`` (or ``timeout`` seconds pass)."""
    from fastplotlib.utils import loop

    g = widget.managed_graphics[0]
    want = np.asarray(frame, dtype=np.float32)
    deadline = time.monotonic() + timeout

    def done() -> bool:
        return bool(np.array_equal(np.asarray(g.data.value), want))

    def check() -> None:
        if done() or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.02, check)

    loop.call_later(0.0, check)
    loop.run()
    return done()


def _offscreen(size: tuple[int, int] = (400, 300)) -> dict:
    return {"canvas": "offscreen", "size": size}


def _sampled(x: np.ndarray) -> tuple[float, float]:
    t = np.unique(np.linspace(0, x.shape[0] - 1, PROVISIONAL_FRAMES).round().astype(int))
    return float(x[t].min()), float(x[t].max())


@pytest.fixture(scope="module")
def small():
    m = cd.synthetic(dims=(30, 40), T=60, K=6, seed=3)
    res = cd.residuals(m)
    return m, res, np.asarray(res[...], dtype=np.float64)


def test_widget_first_frame_fast_then_exact_limits(small, monkeypatch):
    _m, res, dense = small
    cd.forget_statistics()
    calls: list[list[int]] = []
    original = Movie._frames

    def recording(self, times, crop):
        calls.append([int(t) for t in times])
        return original(self, times, crop)

    monkeypatch.setattr(Movie, "_frames", recording)
    with raise_if_dask_computes():  # opening and scrubbing run no dask pass
        widget, live = F.to_fastplotlib(res, exact_limits="request", figure_kwargs=_offscreen())
        widget.show()
        widget.current_index = {"t": 17}
        assert _shows(widget, dense[17])
        widget.current_index = {"t": 42}
        assert _shows(widget, dense[42])
    frames = sorted({t for c in calls for t in c})
    # the 8 sampled frames, and the frames shown: never the whole movie
    assert len(frames) <= PROVISIONAL_FRAMES + 3 and {0, 17, 42} <= set(frames)
    g = widget.managed_graphics[0]
    assert live.state == "provisional"
    np.testing.assert_allclose((g.vmin, g.vmax), _sampled(dense), rtol=1e-5)
    live.wait(timeout=60)
    np.testing.assert_allclose((g.vmin, g.vmax), (dense.min(), dense.max()), rtol=1e-5)
    np.testing.assert_array_equal(g.data.value, dense[42].astype(np.float32))
    widget.figure.canvas.close()


def test_model_panels_and_errors(small):
    m, _, _ = small
    widget, live = F.to_fastplotlib(m, "good", exact_limits="wait", figure_kwargs=_offscreen())
    widget.show()
    assert live.state == "exact" and len(widget.managed_graphics) == 3
    exact = [(float(mv.min), float(mv.max)) for mv in live.movies]
    for g, (lo, hi) in zip(widget.managed_graphics, exact, strict=True):
        assert (g.vmin, g.vmax) == pytest.approx((lo, hi), rel=1e-6)
    widget.figure.canvas.close()
    # fastplotlib's array protocol (ImageWidget / NDWidget): dtype, ndim, shape, __getitem__
    from fastplotlib.utils import ArrayProtocol

    assert all(isinstance(mv, ArrayProtocol) for mv in live.movies)
    m3 = cd.synthetic(dims=(10, 12, 4), T=8, K=2, seed=0)
    with pytest.raises(cd.OptionError, match="2D movies"):
        F.to_fastplotlib(cd.rcm(m3), figure_kwargs=_offscreen())


def _image_pixels(shot: np.ndarray, background: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the pixels that differ from the subplot's background."""
    diff = np.abs(shot[..., :3].astype(int) - background[:3].astype(int)).sum(-1) > 0
    rows, cols = np.nonzero(diff)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def test_rendered_screenshot_matches_the_frame(small):
    """Render headless; the viridis screenshot must match our frame 23 through viridis with
    the exact limits (and must not match frame 24): a per-pixel colour check."""
    _, res, dense = small
    widget, live = F.to_fastplotlib(
        res, exact_limits="wait", cmap="viridis", figure_kwargs=_offscreen((400, 600))
    )
    widget.show()
    subplot = widget.figure[0, 0]
    subplot.axes.visible = False
    widget.current_index = {"t": 23}
    assert _shows(widget, dense[23])
    shot = np.asarray(widget.figure.canvas.draw())
    x, y, w, h = (round(v) for v in subplot.viewport.rect)
    inner = shot[y : y + h, x : x + w]
    # the subplot's background: its corner, far from the centred image (viridis is never black)
    rs, cs = _image_pixels(inner, inner[h - 2, 2])
    img = inner[rs, cs, :3].astype(np.float64)
    H, W = img.shape[:2]
    assert H > 60 and W > 80  # the 30 × 40 frame, magnified
    assert abs(H / W - 30 / 40) < 0.02  # the whole image, uncropped
    lo, hi = live.wait()[0]
    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round()
    d1, d2 = dense.shape[1:]
    # screen rows / columns of each source pixel (its centre third: clear of edge sampling)
    rows = [np.arange(round((i + 1 / 3) * H / d1), round((i + 2 / 3) * H / d1)) for i in range(d1)]
    cols = [np.arange(round((j + 1 / 3) * W / d2), round((j + 2 / 3) * W / d2)) for j in range(d2)]
    shown = np.array([[np.median(img[np.ix_(r, c)], axis=(0, 1)) for c in cols] for r in rows])

    def matching(frame: np.ndarray) -> float:
        """Fraction of source pixels whose screen colour is the colormap's colour of the
        frame's value (within 3 levels per channel)."""
        v = np.clip((frame - lo) / (hi - lo), 0, 1)
        want = lut[np.rint(v * 255).astype(int)]
        return float(np.mean(np.abs(shown - want).max(-1) <= 3))

    right, wrong = matching(dense[23]), matching(dense[24])
    assert right == 1.0, right  # every source pixel (measured: 1.0)
    assert wrong < 0.5, wrong  # the next frame (measured: 0.07)
    assert live.state == "exact"
    widget.figure.canvas.close()
