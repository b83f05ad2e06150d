"""First frame fast: cd.view opens with provisional limits from sampled frames, then switches to
the exact limits computed by one background pass (cancellable, waited for deterministically).

References: dense float64 movies from the synthetic model's frames, their extremes and the
extremes of the 8 sampled frames, and the documented compositor (``gray_levels``).
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from dask.callbacks import Callback
from PIL import Image

import caiman_dask as cd
from caiman_dask._render import gray_levels
from caiman_dask._view import PROVISIONAL_FRAMES, LiveLimits, provisional_limits


@pytest.fixture(scope="module")
def model():
    return cd.synthetic(dims=(20, 26), T=90, K=5, seed=11)


def _dense(mv) -> np.ndarray:
    return np.asarray(mv[...], dtype=np.float64)


def _sampled(x: np.ndarray) -> tuple[float, float]:
    t = np.unique(np.linspace(0, x.shape[0] - 1, PROVISIONAL_FRAMES).round().astype(int))
    assert t[0] == 0 and t[-1] == x.shape[0] - 1 and len(t) == PROVISIONAL_FRAMES
    return float(x[t].min()), float(x[t].max())


class _Hold:
    """Holds the background pass at its first task until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, key, dsk, state) -> None:
        if threading.current_thread().name == "caiman_dask-exact-limits":
            self.started.set()
            assert self.release.wait(60)


def test_provisional_limits_are_the_sampled_frames_extremes(model):
    res = cd.residuals(model)
    dense = _dense(res)
    assert provisional_limits(res) == pytest.approx(_sampled(dense), rel=1e-12)
    lo, hi = provisional_limits(res)
    assert dense.min() <= lo <= hi <= dense.max()  # inside the exact range


def test_view_widget_shows_frame_0_before_the_pass_then_switches(model):
    cd.forget_statistics()
    hold = _Hold()
    with Callback(pretask=hold):
        v = cd.view(model, panels=("raw", "residuals"))
        assert hold.started.wait(60)  # the pass is running (held) ...
        w = v.widget()  # ... and the first frame is already shown
        assert v.live.state == "provisional"
        assert "(provisional limits)" in w.children[0].children[2].value
        dense = [_dense(mv) for mv in v.movies]
        prov = [_sampled(d) for d in dense]
        np.testing.assert_allclose(v.shown_limits, prov, rtol=1e-12)
        shown = np.asarray(Image.open(io.BytesIO(w.display_widget.value)).convert("RGB"))
        np.testing.assert_array_equal(shown, v.frame(0, limits=prov))
        want0 = gray_levels(dense[1][0], *prov[1])  # panel 2 through the documented compositor
        np.testing.assert_array_equal(shown[:, 26 + 2 :, 0], want0)
        hold.release.set()
        exact = v.exact_limits(timeout=60)
    np.testing.assert_allclose(exact, [(d.min(), d.max()) for d in dense], rtol=1e-12)
    assert v.live.state == "exact" and v.limits == exact
    shown = np.asarray(Image.open(io.BytesIO(w.display_widget.value)).convert("RGB"))
    np.testing.assert_array_equal(shown, v.frame(0))  # re-rendered with the exact limits
    assert "(provisional limits)" not in w.children[0].children[2].value


def test_modes_given_and_cached_limits(model):
    cd.forget_statistics()
    raw = cd.raw(model)
    live = LiveLimits([raw], exact="request")
    assert live.state == "provisional" and live._thread is None  # nothing runs until asked
    assert live.wait(60) == ((float(_dense(raw).min()), float(_dense(raw).max())),)
    # now cached: a new viewer is exact at once, without a pass
    again = LiveLimits([cd.raw(model)], exact="request")
    assert again.state == "exact" and again._thread is None
    given = cd.view(model, panels=("raw",), limits=(0.0, 5.0), exact_limits="request")
    assert given.live.state == "exact" and given.shown_limits == ((0.0, 5.0),)
    cd.forget_statistics()
    waited = cd.view(model, panels=("residuals",), exact_limits="wait")
    assert waited.live.state == "exact"
    with pytest.raises(cd.OptionError, match="exact_limits"):
        cd.view(model, exact_limits="soon")


def test_cancel_keeps_provisional_limits_and_caches_nothing(model):
    cd.forget_statistics()
    hold = _Hold()
    with Callback(pretask=hold):
        v = cd.view(model, panels=("residuals",))
        assert hold.started.wait(60)
        v.live._cancel.set()  # what cancel() does, before it joins the (held) thread
        hold.release.set()
        v.live.cancel()
    assert v.live.state == "cancelled"
    assert v.shown_limits == v.live.provisional
    assert cd._statistics.cached_min_max(v.movies[0]) is None
    with pytest.raises(Exception, match="cancelled"):
        v.live.wait()
