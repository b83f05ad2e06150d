"""fastplotlib: our movies in an ``ImageWidget`` with exact contrast limits, first frame fast.

fastplotlib's ``ImageWidget`` (an ``NDWidget`` with one ``add_nd_image`` per movie) takes any
object with ``dtype``, ``ndim``, ``shape`` and ``__getitem__`` (its ``ArrayProtocol``); our
movies are such objects, and the widget asks them only for the frame shown (``movie[t]``, by
index pushdown). :func:`to_fastplotlib` adds what the widget cannot know: per-movie limits that
are provisional (8 sampled frames) at once and exact when one background pass ends
(:class:`~caiman_dask._view.LiveLimits`), and no histogram by default (fastplotlib's histogram
samples up to 10⁶ values of the movie, i.e. many frames, before the first one shows, and its
limits are an estimate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._model import CNMFModel, Components
from ._optional import require
from ._view import ExactLimits, LiveLimits, _panel_movie
from .errors import OptionError

__all__ = ["to_fastplotlib"]


def to_fastplotlib(
    movies: CNMFModel | Any | Sequence[Any],
    components: Components = "all",
    *,
    panels: Sequence[str] = ("raw", "rcm", "residuals"),
    exact_limits: ExactLimits = "background",
    cmap: str = "gray",
    histogram_widget: bool = False,
    figure_kwargs: dict[str, Any] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[Any, LiveLimits]:
    """A fastplotlib ``ImageWidget`` of lazy movies, first frame fast, exact limits after.

    Parameters
    ----------
    movies
        A :class:`CNMFModel` (its ``panels``, as in :func:`caiman_dask.view`: ``"raw"``,
        ``"rcm"`` = ``cd.rcm(m, components) + cd.rcb(m)``, ``"residuals"``, ``"rcb"``), one
        movie or a list of movies of 2D models.
    components
        The components of the ``"rcm"`` panel (model input only).
    panels
        Panels of a model (those needing ``Y`` are dropped when the model has none).
    exact_limits
        ``"background"`` (default: provisional limits from 8 evenly spaced frames now, exact
        ``min`` / ``max`` applied when one background pass over ``Y`` ends), ``"wait"`` or
        ``"request"`` (``live.wait()``); see :class:`~caiman_dask._view.LiveLimits`.
    cmap, histogram_widget, figure_kwargs, names
        Passed to ``fastplotlib.ImageWidget`` (``figure_kwargs={"canvas": "offscreen"}`` renders
        without a display).

    Returns
    -------
    widget, LiveLimits
        The ``ImageWidget`` (``widget.show()``; ``widget.current_index = {"t": 10}``) and its
        live limits (``live.wait()`` returns the exact ones once applied).
    """
    fpl = require("fastplotlib", "cd.to_fastplotlib()")
    if isinstance(movies, CNMFModel):
        model = movies
        idx = model.components(components)
        usable = [p for p in panels if p in ("rcm", "rcb") or model.Y is not None]
        if not usable:
            raise OptionError(f"panels={list(panels)!r} needs the movie Y, which this model lacks")
        data: list[Any] = [_panel_movie(model, p, idx, True, None) for p in usable]
        labels = list(names) if names is not None else list(usable)
    else:
        data = list(movies) if isinstance(movies, list | tuple) else [movies]
        labels = (
            list(names) if names is not None else [str(getattr(m, "kind", "movie")) for m in data]
        )
    for mv in data:
        if len(mv.shape) != 3:
            raise OptionError(
                f"to_fastplotlib shows 2D movies (T, d1, d2); got shape {tuple(mv.shape)}: pass a "
                "plane as a movie of its own, or use cd.view(..., plane=...)"
            )
    live = LiveLimits(data, exact=exact_limits)
    kw = dict(figure_kwargs or {})
    widget = fpl.ImageWidget(
        data=data,
        names=labels,
        cmap=cmap,
        histogram_widget=histogram_widget,
        figure_kwargs=kw,
        frame_apply=_as_float32,
    )
    _set_limits(widget, live.current)
    live.on_exact(lambda lims: _set_limits(widget, lims))
    return widget, live


def _as_float32(frame: np.ndarray) -> np.ndarray:
    """The GPU texture's dtype (fastplotlib casts float64 frames itself, with a warning)."""
    return np.asarray(frame, dtype=np.float32)


def _set_limits(widget: Any, limits: Sequence[tuple[float, float]]) -> None:
    for graphic, (lo, hi) in zip(widget.managed_graphics, limits, strict=True):
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            graphic.vmin, graphic.vmax = float(lo), float(hi)
