"""A lazy ``play_movie``: raw | RCM (+ background) | residuals side by side, frame by frame.

CaImAn's ``Estimates.play_movie`` builds the raw, reconstructed and residual movies in RAM
before showing them. Here every panel is a lazy movie (:mod:`caiman_dask._movie`): showing
frame ``t`` computes ``movie[t]`` for each panel through index pushdown (sub-millisecond, no
dask), and the contrast limits are the movies' exact ``min`` / ``max``. First frame fast: until
the one pass that computes them ends (in a background thread, :class:`LiveLimits`), widgets
show provisional limits from 8 sampled frames, labelled as such. The
"RCM (+ background)" panel is the movie expression ``cd.rcm(m, sel) + cd.rcb(m)``.

- :func:`view` returns a :class:`Viewer`; in a notebook it displays as an ipywidgets frame
  slider (``viewer.widget()``), outside one ``viewer.frame(t)`` gives the RGB frame.
- :func:`save_movie` renders frames one at a time to ``.mp4`` (imageio-ffmpeg, H.264) or
  ``.gif`` (Pillow, palette per frame, lossless).
- :func:`render_frame` is the pure compositor both use; its pixel values are documented
  exactly so they can be recomputed independently.

The optional dependencies (matplotlib, ipywidgets, imageio, imageio-ffmpeg, Pillow) are
imported only inside the functions that need them: ``pip install "caiman-dask[viz]"``.

The compositor is :mod:`caiman_dask._render`; files are written by
:mod:`caiman_dask._encode`.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from dask.callbacks import Callback

from ._encode import write_movie
from ._index import frame_window
from ._model import CNMFModel, Components
from ._movie import Movie, raw, rcb, rcm, residuals
from ._optional import require as _require
from ._options import choose
from ._render import (
    CONTOUR_COLOR,
    _limit_of,
    _plane,
    _resolve_limits,
    compose,
    footprint_contours,
    render_frame,
)
from ._statistics import cached_min_max, project
from .errors import EmptyComponentsWarning, OptionError

__all__ = [
    "EXACT_LIMITS",
    "PANELS",
    "PROVISIONAL_FRAMES",
    "LiveLimits",
    "Viewer",
    "provisional_limits",
    "save_movie",
    "view",
]

#: Panel names :func:`view` understands (any lazy movie object is accepted as well).
PANELS: tuple[str, ...] = ("raw", "rcm", "residuals", "rcb")


def _panel_movie(
    model: CNMFModel, name: str, idx: np.ndarray, background: bool, dtype: Any
) -> Movie:
    """The lazy movie behind a named panel."""
    if name == "raw":
        return raw(model, dtype=dtype)
    if name == "rcb":
        return rcb(model, dtype=dtype)
    if name == "rcm":
        fg = _quiet_rcm(model, idx, dtype)
        if not background or model.background == "none":
            return fg
        return fg + rcb(model, dtype=dtype)
    if name == "residuals":
        res = residuals(model, dtype=dtype)
        rest = np.setdiff1d(np.arange(model.K), idx)
        if rest.size == 0:
            return res
        # Y − A_sel·C_sel − B = (Y − A·C − B) + A_rest·C_rest: raw = rcm(+B) panel + residuals
        return res + rcm(model, rest, dtype=dtype)
    raise OptionError(
        f"panel {name!r} is not one of {list(PANELS)}; or pass a lazy movie (e.g. cd.rcm(...))"
    )


def _quiet_rcm(model: CNMFModel, idx: np.ndarray, dtype: Any) -> Movie:
    """``rcm`` without the empty-selection warning (an empty panel is shown as it is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyComponentsWarning)
        return rcm(model, idx, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# First frame fast: provisional limits now, exact limits from one background pass
# ---------------------------------------------------------------------------------------------

#: When viewers compute the exact limits: ``"background"`` (a daemon thread started at once;
#: the display switches when it finishes), ``"wait"`` (before the first frame, as before) or
#: ``"request"`` (only when ``exact_limits()`` is called).
ExactLimits = Literal["background", "wait", "request"]
EXACT_LIMITS: tuple[ExactLimits, ...] = get_args(ExactLimits)
#: Frames sampled, evenly spaced from the first to the last (frame 0 included), for the
#: provisional limits.
PROVISIONAL_FRAMES = 8


def provisional_limits(movie: Any, n: int = PROVISIONAL_FRAMES) -> tuple[float, float]:
    """``(min, max)`` of ``n`` frames evenly spaced over ``movie`` (frame 0 and the last frame
    included) — an estimate (inside the exact range), computed by index pushdown in
    milliseconds. NaN where every sampled pixel is non-finite."""
    T = int(movie.shape[0])
    times = np.unique(np.linspace(0, T - 1, min(n, T)).round().astype(np.int64))
    frames = np.asarray(movie[times], dtype=np.float64)
    finite = frames[np.isfinite(frames)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    return (float(finite.min()), float(finite.max()))


class _Cancelled(Exception):
    """Raised inside the background pass's own dask computation to stop it."""


class LiveLimits:
    """Contrast limits of several movies: provisional ones now, exact ones later.

    The provisional limits are the min / max of :data:`PROVISIONAL_FRAMES` evenly spaced frames
    (:func:`provisional_limits`); the exact limits are the movies' exact ``min`` / ``max``, all
    from one shared pass over ``Y`` (:func:`caiman_dask.project`), run in a daemon thread
    (``exact="background"``), before returning (``"wait"``) or when :meth:`wait` is called
    (``"request"``). Limits already known (given, or cached from an earlier pass) are exact at
    once. Callbacks registered with :meth:`on_exact` run (in the background thread) when the
    exact limits arrive, before :meth:`wait` returns; :meth:`cancel` stops the pass between two
    dask tasks (on the local scheduler; with a distributed Client the result is discarded).

    Attributes
    ----------
    provisional : tuple of (float, float)
        Per movie, the limits from the sampled frames (equal to the given ones where given).
    """

    def __init__(
        self,
        movies: Sequence[Any],
        given: Sequence[tuple[float, float] | None] | None = None,
        *,
        exact: ExactLimits = "background",
        samples: int = PROVISIONAL_FRAMES,
    ) -> None:
        mode = choose("exact_limits", exact, EXACT_LIMITS)
        self.movies = tuple(movies)
        given = list(given) if given is not None else [None] * len(self.movies)
        self._exact: list[tuple[float, float] | None] = [
            g if g is not None else _known_limits(mv)
            for g, mv in zip(given, self.movies, strict=True)
        ]
        self.provisional = tuple(
            e if e is not None else provisional_limits(mv, samples)
            for e, mv in zip(self._exact, self.movies, strict=True)
        )
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[tuple[tuple[float, float], ...]], None]] = []
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._ready = False
        if all(e is not None for e in self._exact):
            self._ready = True
            self._done.set()
        elif mode == "wait":
            self._run()
        elif mode == "background":
            self.start()

    # -------------------------------------------------------------- state
    @property
    def is_exact(self) -> bool:
        """Whether the exact limits are known."""
        return self._ready and self.error is None

    @property
    def current(self) -> tuple[tuple[float, float], ...]:
        """The exact limits when known, else the provisional ones."""
        if self.is_exact:
            return tuple(e for e in self._exact if e is not None)
        return self.provisional

    @property
    def state(self) -> str:
        """``"exact"``, ``"provisional"`` (pass pending or running), ``"cancelled"`` or
        ``"failed"``."""
        if self.is_exact:
            return "exact"
        if self.error is not None:
            return "cancelled" if isinstance(self.error, _Cancelled) else "failed"
        return "provisional"

    # -------------------------------------------------------------- the pass
    def start(self) -> None:
        """Start the background pass (no-op when running or done)."""
        with self._lock:
            if self._thread is not None or self._done.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name="caiman_dask-exact-limits", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        me = threading.get_ident()

        def pretask(key: Any, dsk: Any, state: Any) -> None:
            if self._cancel.is_set() and threading.get_ident() == me:
                raise _Cancelled("exact-limits pass cancelled")

        try:
            with Callback(pretask=pretask):
                todo = [mv for mv, e in zip(self.movies, self._exact, strict=True) if e is None]
                streaming = [mv for mv in todo if _streams(mv)]
                if streaming:  # one shared pass over Y for every streaming movie
                    project(streaming, ["min", "max"])
                for i, mv in enumerate(self.movies):
                    if self._cancel.is_set():
                        raise _Cancelled("exact-limits pass cancelled")
                    if self._exact[i] is None:
                        self._exact[i] = _limit_of(mv)
        except Exception as exc:  # noqa: BLE001 (no caller in this thread: wait() re-raises it)
            self.error = exc
        try:  # the display is updated before wait() returns
            if self.error is None:
                with self._lock:
                    self._ready = True
                    callbacks = list(self._callbacks)
                for cb in callbacks:
                    cb(self.current)
        finally:
            self._done.set()

    def on_exact(self, callback: Callable[[tuple[tuple[float, float], ...]], None]) -> None:
        """Call ``callback(limits)`` when the exact limits arrive (at once if known)."""
        with self._lock:
            ready = self.is_exact
            if not ready:
                self._callbacks.append(callback)
        if ready:
            callback(self.current)

    def wait(self, timeout: float | None = None) -> tuple[tuple[float, float], ...]:
        """The exact limits: start the pass if needed and block until it ends.

        Raises
        ------
        TimeoutError
            Not finished within ``timeout`` seconds.
        """
        if not self._done.is_set():
            if self._thread is None and not self._cancel.is_set():
                self.start()
            if not self._done.wait(timeout):
                raise TimeoutError(f"the exact-limits pass did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.current

    def cancel(self) -> None:
        """Stop the background pass (the provisional limits stay) and wait for its thread: at
        once on the local scheduler (the pass stops before its next dask task); with a
        distributed Client, when the running computation returns (its limits are not applied).
        """
        self._cancel.set()
        t = self._thread
        if t is not None:
            t.join()
        elif not self._done.is_set():
            self.error = _Cancelled("exact-limits pass cancelled before it started")
            self._done.set()

    def __repr__(self) -> str:
        return f"<caiman_dask.LiveLimits {self.state} {list(self.current)}>"


def _streams(movie: Any) -> bool:
    """Whether a movie's statistics take a pass over ``Y`` (a caiman_dask streaming movie)."""
    desc = getattr(movie, "description", None)
    return isinstance(movie, Movie) and bool(getattr(desc, "streaming", False))


def _known_limits(movie: Any) -> tuple[float, float] | None:
    """Exact limits that cost no pass: cached ones, or those of NumPy arrays; else ``None``."""
    if isinstance(movie, np.ndarray):
        return _limit_of(movie)
    if isinstance(movie, Movie):
        return cached_min_max(movie)
    return None


# ---------------------------------------------------------------------------------------------
# The viewer
# ---------------------------------------------------------------------------------------------


class Viewer:
    """Lazy side-by-side movie panels with a frame slider (see :func:`view`).

    Attributes
    ----------
    movies : tuple
        The lazy movies of the panels.
    names : tuple of str
        Panel names (``"raw"``, ``"rcm"``, ...; the keys of a ``limits`` dict).
    titles : tuple of str
        Panel titles shown (``"rcm + background"`` for the RCM panel with background).
    times : numpy.ndarray
        The movie frames the viewer browses (slider position ``i`` shows frame ``times[i]``).
    contours : numpy.ndarray or None
        The boolean contour mask drawn on every panel.
    """

    def __init__(
        self,
        movies: Sequence[Any],
        names: Sequence[str],
        *,
        times: np.ndarray,
        titles: Sequence[str] | None = None,
        limits: Any = None,
        contours: np.ndarray | None = None,
        scale: int = 1,
        gap: int = 2,
        contour_color: Sequence[int] = CONTOUR_COLOR,
        plane: int | None = None,
        fr: float | None = None,
        exact_limits: ExactLimits = "background",
    ) -> None:
        self.movies = tuple(movies)
        self.names = tuple(names)
        self.titles = tuple(titles) if titles is not None else self.names
        self.times = np.asarray(times, dtype=np.int64)
        self._given_limits = _resolve_limits(limits, self.movies, self.names)
        self.contours = contours
        self.scale = scale
        self.gap = gap
        self.contour_color = tuple(int(c) for c in contour_color)
        self.plane = plane
        self.fr = fr
        # validate rendering options now rather than at the first frame
        compose(
            [np.zeros((1, 1))],
            [(0.0, 1.0)],
            scale=scale,
            gap=gap,
            contour_color=contour_color,
        )
        #: The live limits: provisional from sampled frames now, exact when the pass ends.
        self.live = LiveLimits(self.movies, self._given_limits, exact=exact_limits)

    # ------------------------------------------------------------------ frames
    @property
    def limits(self) -> tuple[tuple[float, float], ...]:
        """Per-panel ``(vmin, vmax)``: the given ones, else the movie's exact min / max (waits
        for the exact-limits pass; see :meth:`exact_limits`)."""
        return self.live.wait()

    @property
    def shown_limits(self) -> tuple[tuple[float, float], ...]:
        """The limits the widgets show now: exact when known, else provisional (the min / max
        of :data:`PROVISIONAL_FRAMES` sampled frames); ``self.live.state`` says which."""
        return self.live.current

    def exact_limits(self, timeout: float | None = None) -> tuple[tuple[float, float], ...]:
        """Compute (or wait for) the exact limits; open widgets switch to them. Returns them."""
        return self.live.wait(timeout)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, 3)`` of a rendered frame."""
        d1, d2 = self.movies[0].shape[1:3]
        n = len(self.movies)
        return (d1 * self.scale, n * d2 * self.scale + (n - 1) * self.gap, 3)

    def frame(self, t: int, *, limits: Any = None) -> np.ndarray:
        """Movie frame ``t`` (a frame index, not a slider position) rendered as RGB ``uint8``,
        with the exact :attr:`limits` (or ``limits``, one pair per panel)."""
        return render_frame(
            self.movies,
            t,
            limits=self.limits if limits is None else limits,
            contours=self.contours,
            scale=self.scale,
            gap=self.gap,
            contour_color=self.contour_color,
            plane=self.plane,
        )

    def iter_frames(self, times: Any = None) -> Iterator[np.ndarray]:
        """Rendered frames one at a time (``times``: frame indices, default :attr:`times`)."""
        T = self.movies[0].shape[0]
        for t in self.times if times is None else frame_window(times, T).times:
            yield self.frame(int(t))

    def __repr__(self) -> str:
        return (
            f"<caiman_dask.Viewer panels={list(self.names)} frames={len(self)} "
            f"frame_shape={self.frame_shape}>"
        )

    # ------------------------------------------------------------------ notebook
    def widget(self, backend: str = "image") -> Any:
        """An ipywidgets box: a frame slider (with a play button) and the panels.

        ``backend="image"`` (default) shows :meth:`frame` as a PNG ``ipywidgets.Image`` — the
        same pixels :func:`save_movie` writes. ``backend="matplotlib"`` draws one ``imshow``
        per panel (titles, gray colormap, the same limits, contours overlaid) and updates it
        with ``set_data``; with ``%matplotlib widget`` (ipympl) the canvas is interactive.

        The box has attributes ``slider`` (``IntSlider`` over positions ``0..len(self)-1``),
        ``display_widget`` and ``current_frame`` (the frame index shown), and for
        matplotlib ``figure`` and ``images``.
        """
        if backend == "image":
            return _image_widget(self)
        if backend == "matplotlib":
            return _matplotlib_widget(self)
        raise OptionError(f"backend={backend!r} is not one of 'image', 'matplotlib'")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())

    def figure(self, t: int) -> Any:
        """A matplotlib figure of frame ``t``: one titled ``imshow`` per panel."""
        fig, _ = _mpl_figure(self, t)
        return fig

    # ------------------------------------------------------------------ files
    def save(
        self,
        path: str | os.PathLike[str],
        *,
        frames: Any = None,
        fps: float | None = None,
        overwrite: bool = False,
        quality: float = 8,
        progress: bool = True,
    ) -> Path:
        """Write frames (default :attr:`times`) to ``.mp4`` or ``.gif``; see :func:`save_movie`."""
        T = self.movies[0].shape[0]
        times = self.times if frames is None else frame_window(frames, T).times
        return write_movie(
            self,
            Path(path),
            times,
            fps=fps,
            overwrite=overwrite,
            quality=quality,
            progress=progress,
        )


def view(
    model: CNMFModel,
    components: Components = "all",
    *,
    panels: Sequence[str | Any] | None = None,
    background: bool = True,
    contours: Components | bool | None = None,
    contour_threshold: float = 0.2,
    contour_color: Sequence[int] = CONTOUR_COLOR,
    frames: Any = None,
    limits: Any = None,
    scale: int = 1,
    gap: int = 2,
    plane: int | None = None,
    dtype: Any = None,
    exact_limits: ExactLimits = "background",
) -> Viewer:
    """CaImAn's ``play_movie``, lazily: raw | RCM (+ background) | residuals side by side.

    Parameters
    ----------
    model
        A :class:`CNMFModel`.
    components
        The components of the RCM panel (``"all"``, ``"good"``, indices, a mask...).
    panels
        Panel names from :data:`PANELS`, or lazy movies, left to right. Default
        ``("raw", "rcm", "residuals")`` when the model has the movie ``Y``, else ``("rcm",)``.

        - ``"raw"``: ``Y``;
        - ``"rcm"``: ``A_sel · C_sel``, plus the background ``B`` when ``background`` is true
          (as CaImAn's ``play_movie`` shows ``A·C + B``);
        - ``"residuals"``: ``Y − A_sel · C_sel − B``, so ``raw = rcm (+B) + residuals`` pixel for
          pixel (with ``components="all"``, exactly :func:`caiman_dask.residuals`);
        - ``"rcb"``: the background ``B``.
    background
        Add the background to the ``"rcm"`` panel.
    contours
        ``None`` / ``False`` (no contours), ``True`` (contours of ``components``) or a component
        selection; drawn on every panel (see :func:`footprint_contours`).
    contour_threshold
        Footprint threshold as a fraction of each component's maximum.
    contour_color
        RGB of the contours.
    frames
        The frames to browse: ``None`` (all), a slice, indices or a boolean mask.
    limits
        Contrast: ``None`` (each panel's exact ``min`` / ``max`` over the whole movie), one
        ``(vmin, vmax)`` pair, one per panel, or a dict by panel name.
    scale, gap
        Integer upscaling of each pixel; black columns between panels.
    plane
        For 3D models, the ``d3`` plane shown (default ``d3 // 2``).
    dtype
        Compute dtype of the named panels' movies (default: the movies' own).
    exact_limits
        When the exact limits of panels without given ``limits`` are computed:
        ``"background"`` (default: a daemon thread starts at once, one shared pass over ``Y``;
        widgets show provisional limits until it ends, then switch), ``"wait"`` (before
        returning) or ``"request"`` (only when ``viewer.exact_limits()`` is called or
        :attr:`Viewer.limits` is read). See :class:`LiveLimits`.

    Returns
    -------
    Viewer
        Displays itself as a slider widget in a notebook; ``viewer.frame(t)`` renders a frame,
        ``viewer.save("out.mp4")`` writes a movie.

    Notes
    -----
    First frame fast: the viewer opens with provisional limits, the min / max of
    :data:`PROVISIONAL_FRAMES` (8) frames evenly spaced over the movie (frame 0 and the last
    included), computed by index pushdown in milliseconds; widgets label them
    "(provisional limits)". The exact limits (from the factors for ``"rcm"``; one streaming
    pass over ``Y``, shared by ``"raw"`` and ``"residuals"`` and cached) are computed in a
    background thread and the widgets switch to them when it ends (``viewer.live.state``,
    ``viewer.exact_limits()`` to wait, ``viewer.live.cancel()`` to stop). :meth:`Viewer.frame`
    and :func:`save_movie` always use the exact limits. Every frame computes only ``movie[t]``
    per panel, without dask.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(24, 30), T=20, K=4, seed=0)
    >>> v = cd.view(m, "good", contours=True)
    >>> v.frame(3).shape
    (24, 94, 3)
    """
    if not isinstance(model, CNMFModel):
        raise OptionError(
            f"view() takes a CNMFModel (cd.open_cnmf / cd.from_arrays), got {type(model).__name__}"
        )
    idx = model.components(components)
    if panels is None:
        panels = ("raw", "rcm", "residuals") if model.Y is not None else ("rcm",)
    if isinstance(panels, str):
        panels = (panels,)
    if len(panels) == 0:
        raise OptionError("panels is empty: name at least one of " + ", ".join(PANELS))
    movies: list[Any] = []
    names: list[str] = []
    titles: list[str] = []
    for p in panels:
        if isinstance(p, str):
            movies.append(_panel_movie(model, p, idx, background, dtype))
            names.append(p)
            with_bg = p == "rcm" and background and model.background != "none"
            titles.append("rcm + background" if with_bg else p)
        elif hasattr(p, "shape") and hasattr(p, "__getitem__"):
            if tuple(p.shape) != (model.T, *model.dims):
                raise OptionError(
                    f"a panel movie has shape {tuple(p.shape)} but the model's movies are "
                    f"{(model.T, *model.dims)}"
                )
            movies.append(p)
            names.append(str(getattr(p, "kind", type(p).__name__)))
            titles.append(names[-1])
        else:
            raise OptionError(
                f"panel {p!r} is neither a name from {list(PANELS)} nor a movie-like object"
            )
    plane = _plane(model.dims, plane)
    mask = None
    if contours is not None and contours is not False:
        sel = components if contours is True else contours
        mask = footprint_contours(model, sel, threshold=contour_threshold, plane=plane)
    return Viewer(
        movies,
        names,
        titles=titles,
        times=frame_window(frames, model.T).times,
        limits=limits,
        contours=mask,
        scale=scale,
        gap=gap,
        contour_color=contour_color,
        plane=plane,
        fr=model.fr,
        exact_limits=exact_limits,
    )


# ---------------------------------------------------------------------------------------------
# Widgets
# ---------------------------------------------------------------------------------------------


def _png(frame: np.ndarray) -> bytes:
    Image = _require("PIL.Image", "the viewer widget")
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def _controls(viewer: Viewer, on_change: Callable[[int], None]) -> tuple[Any, Any, Any]:
    widgets = _require("ipywidgets", "the viewer widget")
    n = len(viewer)
    slider = widgets.IntSlider(
        value=0, min=0, max=n - 1, step=1, description="frame", continuous_update=True
    )
    play = widgets.Play(value=0, min=0, max=n - 1, step=1, interval=int(1000 / (viewer.fr or 30)))
    widgets.jslink((play, "value"), (slider, "value"))
    label = widgets.Label()

    def update(change: Any) -> None:
        pos = int(change["new"]) if isinstance(change, Mapping) else int(change)
        t = int(viewer.times[pos])
        on_change(t)
        state = "" if viewer.live.is_exact else "   (provisional limits)"
        label.value = f"t = {t}   |   " + "   |   ".join(viewer.titles) + state

    slider.observe(update, names="value")
    update(0)
    viewer.live.on_exact(lambda _: update(slider.value))
    return slider, play, label


def _image_widget(viewer: Viewer) -> Any:
    widgets = _require("ipywidgets", "the viewer widget")
    image = widgets.Image(format="png")
    shown: dict[str, Any] = {}

    def show(t: int) -> None:
        image.value = _png(viewer.frame(t, limits=viewer.shown_limits))
        _set_current(shown, t)

    slider, play, label = _controls(viewer, show)
    viewer.live.on_exact(lambda _: show(shown["t"]))
    box = widgets.VBox([widgets.HBox([play, slider, label]), image])
    box.slider = slider
    box.display_widget = image
    box.viewer = viewer
    shown["box"] = box
    _set_current(shown, shown["t"])
    return box


def _set_current(shown: dict[str, Any], t: int) -> None:
    """Record the frame shown (``box.current_frame``), also before the box exists."""
    shown["t"] = t
    if "box" in shown:
        shown["box"].current_frame = t


def _mpl_figure(viewer: Viewer, t: int) -> tuple[Any, list[Any]]:
    mpl = _require("matplotlib", "the matplotlib viewer")
    from matplotlib.figure import Figure

    n = len(viewer.movies)
    d1, d2 = viewer.movies[0].shape[1:3]
    size = (min(4.0 * n, 16.0), min(4.0 * n, 16.0) / n * d1 / d2 + 0.6)
    backend = str(mpl.get_backend()).lower()
    if "ipympl" in backend or "widget" in backend:  # %matplotlib widget: an interactive canvas
        import matplotlib.pyplot as plt

        with plt.ioff():
            fig = plt.figure(figsize=size)
    else:  # a bare figure: not registered with pyplot, so never shown twice
        fig = Figure(figsize=size)
    axes = fig.subplots(1, n, squeeze=False)[0]
    frames = _panel_frames(viewer, t)
    images = []
    overlay = None
    if viewer.contours is not None:
        overlay = np.zeros((d1, d2, 4))
        overlay[viewer.contours, :3] = np.asarray(viewer.contour_color) / 255.0
        overlay[viewer.contours, 3] = 1.0
    lims = viewer.shown_limits
    for ax, name, im, (vmin, vmax) in zip(axes, viewer.titles, frames, lims, strict=True):
        images.append(ax.imshow(im, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest"))
        if overlay is not None:
            ax.imshow(overlay, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(f"t = {t}")
    fig.tight_layout()
    return fig, images


def _panel_frames(viewer: Viewer, t: int) -> list[np.ndarray]:
    out = []
    for mv in viewer.movies:
        key: Any = t if len(mv.shape) == 3 else (t, slice(None), slice(None), viewer.plane)
        out.append(np.asarray(mv[key]))
    return out


def _matplotlib_widget(viewer: Viewer) -> Any:
    widgets = _require("ipywidgets", "the viewer widget")
    t0 = int(viewer.times[0])
    fig, images = _mpl_figure(viewer, t0)
    canvas = fig.canvas
    interactive = isinstance(canvas, widgets.DOMWidget)  # ipympl
    out = None if interactive else widgets.Output()
    shown: dict[str, Any] = {"t": t0}

    def redraw() -> None:
        if out is None:
            canvas.draw_idle()
            return
        from IPython.display import display

        with out:
            out.clear_output(wait=True)
            display(fig)

    def show(t: int) -> None:
        if shown["t"] != t:
            for im, frame in zip(images, _panel_frames(viewer, t), strict=True):
                im.set_data(frame)
            fig.suptitle(f"t = {t}")
        _set_current(shown, t)
        redraw()

    def exact(limits: tuple[tuple[float, float], ...]) -> None:
        for im, (lo, hi) in zip(images, limits, strict=True):
            im.set_clim(lo, hi)
        redraw()

    slider, play, label = _controls(viewer, show)
    viewer.live.on_exact(exact)
    box = widgets.VBox([widgets.HBox([play, slider, label]), canvas if out is None else out])
    box.slider = slider
    box.display_widget = canvas if out is None else out
    box.figure = fig
    box.images = images
    box.viewer = viewer
    shown["box"] = box
    _set_current(shown, shown["t"])
    return box


def save_movie(
    model: CNMFModel,
    path: str | os.PathLike[str],
    components: Components = "all",
    *,
    frames: Any = slice(0, 100),
    fps: float | None = None,
    overwrite: bool = False,
    quality: float = 8,
    progress: bool = True,
    **view_kwargs: Any,
) -> Path:
    """Render the side-by-side movie of :func:`view` to ``.mp4`` or ``.gif``, frame by frame.

    Parameters
    ----------
    model, components
        As for :func:`view`.
    path
        The output file; its suffix picks the format: ``.mp4`` (H.264, ``yuv420p``, via
        imageio-ffmpeg; frames padded with black to even width / height) or ``.gif`` (Pillow;
        each frame stored with its own palette of its exact colours).
    frames
        Frames to write (default the first 100): a slice, indices or a boolean mask; ``None``
        for all.
    fps
        Frames per second (default the model's frame rate ``fr``, else 30).
    overwrite
        Replace an existing file (otherwise :class:`MovieExistsError`).
    quality
        MP4 quality 1..10 (imageio-ffmpeg's scale; 8 ≈ x264 ``crf 10``).
    progress
        Show a progress bar.
    **view_kwargs
        ``panels``, ``background``, ``contours``, ``limits``, ``scale``... as for :func:`view`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    Frames are computed and encoded one at a time (MP4 memory is one frame; a GIF keeps its
    encoded 1-byte-per-pixel frames until the file is written). The file is written under a
    temporary name and renamed when complete. A GIF is lossless when a frame has at most 256
    colours (always without contours); otherwise the rarest gray levels are merged into their
    nearest kept level (off by one gray level at those pixels). GIF delays are in 1/100 s, and
    GIF writers merge identical consecutive frames into one longer frame.
    """
    viewer = view(model, components, frames=frames, **view_kwargs)
    return viewer.save(path, fps=fps, overwrite=overwrite, quality=quality, progress=progress)
