"""A lazy ``play_movie``: raw | RCM (+ background) | residuals side by side, frame by frame.

CaImAn's ``Estimates.play_movie`` builds the raw, reconstructed and residual movies in RAM
before showing them. Here every panel is a lazy movie (:mod:`caiman_dask._movies`): showing
frame ``t`` computes ``movie[t]`` for each panel through index pushdown (sub-millisecond, no
dask), and the contrast limits are the movies' exact ``min`` / ``max``.

- :func:`view` returns a :class:`Viewer`; in a notebook it displays as an ipywidgets frame
  slider (``viewer.widget()``), outside one ``viewer.frame(t)`` gives the RGB frame.
- :func:`save_movie` renders frames one at a time to ``.mp4`` (imageio-ffmpeg, H.264) or
  ``.gif`` (Pillow, palette per frame, lossless).
- :func:`render_frame` is the pure compositor both use; its pixel values are documented
  exactly so they can be recomputed independently.

The optional dependencies (matplotlib, ipywidgets, imageio, imageio-ffmpeg, Pillow) are
imported only inside the functions that need them: ``pip install "caiman-dask[viz]"``.

Rendering (:func:`render_frame`)
--------------------------------
For panels ``0..n-1`` with frames ``x_p = movie_p[t]`` of shape ``(d1, d2)`` (for 3D data the
plane ``x_p = movie_p[t, :, :, plane]``) and limits ``(vmin_p, vmax_p)``:

- gray level ``g = rint(clip((x - vmin) / (vmax - vmin), 0, 1) * 255)`` computed in float64
  (``rint`` rounds half to even), as ``uint8``; NaN pixels, and every pixel of a panel with
  ``vmax <= vmin``, are 0;
- each pixel becomes a ``scale × scale`` block (nearest neighbour);
- panel ``p`` occupies columns ``p * (d2*scale + gap)`` to ``p * (d2*scale + gap) + d2*scale``
  and all ``d1*scale`` rows; the ``gap`` columns between panels are black (0, 0, 0);
- gray pixels are ``(g, g, g)``; contour pixels (a boolean ``(d1, d2)`` mask, the same on every
  panel) are ``contour_color`` instead.

The frame is ``(d1*scale, n*d2*scale + (n-1)*gap, 3)`` ``uint8``. Contours come from
:func:`footprint_contours`: footprint = the pixels where a component's column of ``A`` exceeds
``threshold × its maximum``; its boundary = the footprint pixels with at least one of their 4
neighbours outside the footprint (pixels beyond the frame edge count as outside).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse

from ._model import CNMFModel, Components
from ._movies import RCB, RCM, Movie, raw, rcb, rcm, residuals
from .errors import CaimanDaskError, OptionError

__all__ = [
    "PANELS",
    "Combined",
    "MissingDependencyError",
    "MovieExistsError",
    "Viewer",
    "footprint_contours",
    "render_frame",
    "save_movie",
    "view",
]

#: Panel names :func:`view` understands (any lazy movie object is accepted as well).
PANELS: tuple[str, ...] = ("raw", "rcm", "residuals", "rcb")
#: Default contour colour (RGB).
CONTOUR_COLOR: tuple[int, int, int] = (255, 0, 0)
_VIZ_EXTRA = 'pip install "caiman-dask[viz]"'


class MissingDependencyError(CaimanDaskError, ImportError):
    """An optional dependency of the viewer (matplotlib, ipywidgets, imageio...) is missing."""


class MovieExistsError(CaimanDaskError, FileExistsError):
    """:func:`save_movie` refuses to replace an existing file without ``overwrite=True``."""


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pkg = {"PIL": "pillow"}.get(top, top.replace("_", "-"))
        raise MissingDependencyError(
            f"{what} needs the optional package {pkg!r}, which is not installed: "
            f"{_VIZ_EXTRA} (or pip install {pkg})."
        ) from exc


# ---------------------------------------------------------------------------------------------
# A sum of lazy movies (RCM + background, residuals of a component subset)
# ---------------------------------------------------------------------------------------------


class Combined(Movie):
    """``Σ sign_i · movie_i`` of lazy movies of one model, itself a lazy movie.

    ``movie[t]`` computes each part's frame by index pushdown and adds them; ``.data`` is the
    sum of the parts' dask arrays. ``min`` / ``max`` are exact: for ``RCM + low-rank RCB``
    from the stacked factors ``[A | b] · [C; f]`` (no pass over the movie), otherwise by one
    streaming pass (as :func:`caiman_dask.project` does for residuals).
    """

    def __init__(self, parts: Sequence[tuple[int, Movie]], kind: str) -> None:
        if not parts:
            raise OptionError("Combined needs at least one (sign, movie) part")
        first = parts[0][1]
        dtype = np.result_type(*(mv.dtype for _, mv in parts))
        super().__init__(first.model, dtype=dtype, frame_chunk=first._frame_chunk)
        for sign, mv in parts:
            if sign not in (1, -1):
                raise OptionError(f"part signs must be +1 or -1, got {sign!r}")
            if mv.model is not first.model:
                raise OptionError("all parts of a Combined movie must come from the same model")
        self.parts = tuple(parts)
        self.kind = kind

    def _fill(self, out: np.ndarray, times: np.ndarray, crop: Any) -> None:
        for i, (sign, mv) in enumerate(self.parts):
            part = mv._frames(times, crop).reshape(out.shape)
            if i == 0:
                np.multiply(part, sign, out=out, casting="unsafe")
            elif sign > 0:
                np.add(out, part, out=out, casting="unsafe")
            else:
                np.subtract(out, part, out=out, casting="unsafe")

    def _build_dask(self) -> da.Array:
        total: da.Array | None = None
        for sign, mv in self.parts:
            d = mv.data
            if total is None:
                total = d if sign > 0 else -d
            else:
                total = total + d if sign > 0 else total - d
        assert total is not None
        return total.astype(self._dtype) if total.dtype != self._dtype else total

    @property
    def time_chunks(self) -> tuple[int, ...]:
        return self.parts[0][1].time_chunks

    def _minmax(self) -> tuple[float, float]:
        cached = self.__dict__.get("_min_max")
        if cached is not None:
            return cached
        structured = all(sign > 0 and type(mv) in (RCM, RCB) for sign, mv in self.parts)
        if not structured:
            return super()._minmax()
        from ._structured import structured_min_max

        h = self.model._host
        spatial: list[Any] = []
        temporal: list[np.ndarray] = []
        for _, mv in self.parts:
            if isinstance(mv, RCM):
                spatial.append(scipy.sparse.csr_matrix(h.A[:, mv.idx], dtype=np.float64))
                temporal.append(np.asarray(mv.traces_selected, dtype=np.float64))
            else:
                assert h.b is not None and h.f is not None
                spatial.append(scipy.sparse.csr_matrix(np.asarray(h.b, dtype=np.float64)))
                temporal.append(np.asarray(h.f, dtype=np.float64))
        A = scipy.sparse.hstack(spatial, format="csr")
        C = np.ascontiguousarray(np.concatenate(temporal, axis=0))
        if A.shape[1] == 0:
            cached = (0.0, 0.0)
        else:
            lo, hi = structured_min_max(A, C)
            cached = (float(np.nanmin(lo)), float(np.nanmax(hi)))
        self.__dict__["_min_max"] = cached
        return cached


def _panel_movie(
    model: CNMFModel, name: str, idx: np.ndarray, background: bool, dtype: Any
) -> Movie:
    """The lazy movie behind a named panel."""
    if name == "raw":
        return raw(model, dtype=dtype)
    if name == "rcb":
        return rcb(model, dtype=dtype)
    if name == "rcm":
        fg = rcm(model, idx, dtype=dtype) if idx.size else _quiet_empty_rcm(model, idx, dtype)
        if not background or model.background == "none":
            return fg
        return Combined([(1, fg), (1, rcb(model, dtype=dtype))], "rcm+rcb")
    if name == "residuals":
        res = residuals(model, dtype=dtype)
        rest = np.setdiff1d(np.arange(model.K), idx)
        if rest.size == 0:
            return res
        # Y − A_sel·C_sel − B = (Y − A·C − B) + A_rest·C_rest: raw = rcm(+B) panel + residuals
        return Combined([(1, res), (1, rcm(model, rest, dtype=dtype))], "residuals")
    raise OptionError(
        f"panel {name!r} is not one of {list(PANELS)}; or pass a lazy movie (e.g. cd.rcm(...))"
    )


def _quiet_empty_rcm(model: CNMFModel, idx: np.ndarray, dtype: Any) -> Movie:
    import warnings

    from .errors import EmptyComponentsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyComponentsWarning)
        return rcm(model, idx, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Contours
# ---------------------------------------------------------------------------------------------


def footprint_contours(
    model: CNMFModel,
    components: Components = "all",
    *,
    threshold: float = 0.2,
    plane: int | None = None,
) -> np.ndarray:
    """Boolean ``(d1, d2)`` mask of the footprint boundaries of ``components``.

    Footprint of component ``k``: pixels where ``A[:, k] > threshold * max(A[:, k])`` (nothing
    when the maximum is not positive). Boundary: footprint pixels with at least one 4-neighbour
    outside the footprint; pixels beyond the frame edge count as outside. The mask is the union
    over the components. For 3D models the footprints are cut at ``plane`` (default the middle
    plane ``d3 // 2``); the threshold uses each component's maximum over the whole volume.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(24, 30), T=10, K=3, seed=0)
    >>> cd.footprint_contours(m, [0]).shape
    (24, 30)
    """
    if not 0 <= threshold < 1:
        raise OptionError(f"threshold={threshold!r} must be in [0, 1) (a fraction of the max)")
    dims = model.dims
    plane = _plane(dims, plane)
    idx = model.components(components)
    A = scipy.sparse.csc_matrix(model._host.A)  # (P, K), C pixel order
    d1, d2 = dims[0], dims[1]
    out = np.zeros((d1, d2), dtype=bool)
    for k in idx:
        lo, hi = A.indptr[k], A.indptr[k + 1]
        rows, vals = A.indices[lo:hi], A.data[lo:hi]
        if vals.size == 0 or not vals.max() > 0:
            continue
        pix = rows[vals > threshold * vals.max()]
        coords = np.unravel_index(pix, dims)
        if plane is not None:
            keep = coords[2] == plane
            coords = (coords[0][keep], coords[1][keep])
        i, j = coords[0], coords[1]
        if i.size == 0:
            continue
        # local mask with a one-pixel border of "outside"
        i0, j0 = i.min(), j.min()
        m = np.zeros((i.max() - i0 + 3, j.max() - j0 + 3), dtype=bool)
        m[i - i0 + 1, j - j0 + 1] = True
        inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        edge = m[1:-1, 1:-1] & ~inner
        ei, ej = np.nonzero(edge)
        out[ei + i0, ej + j0] = True
    return out


def _plane(dims: tuple[int, ...], plane: int | None) -> int | None:
    if len(dims) == 2:
        if plane is not None:
            raise OptionError(f"plane={plane!r} is only for 3D models; this one has dims={dims}")
        return None
    d3 = dims[2]
    if plane is None:
        return d3 // 2
    if not -d3 <= int(plane) < d3:
        raise OptionError(f"plane={plane!r} is out of range for d3={d3} (valid: 0..{d3 - 1})")
    return int(plane) % d3


# ---------------------------------------------------------------------------------------------
# The compositor
# ---------------------------------------------------------------------------------------------


def gray_levels(x: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``rint(clip((x - vmin) / (vmax - vmin), 0, 1) * 255)`` as uint8 (float64 maths).

    NaN pixels, and all pixels when ``vmax <= vmin``, map to 0.
    """
    x = np.asarray(x, dtype=np.float64)
    vmin, vmax = float(vmin), float(vmax)
    if not vmax > vmin:
        return np.zeros(x.shape, dtype=np.uint8)
    v = np.clip((x - vmin) / (vmax - vmin), 0.0, 1.0)
    v = np.rint(v * 255.0)
    v[np.isnan(v)] = 0.0
    return v.astype(np.uint8)


def _limit_of(movie: Any) -> tuple[float, float]:
    """Exact ``(min, max)`` of a movie-like object (properties, or methods as on ndarrays)."""
    lo, hi = movie.min, movie.max
    lo = lo() if callable(lo) else lo
    hi = hi() if callable(hi) else hi
    return float(lo), float(hi)


def _resolve_limits(
    limits: Any, movies: Sequence[Any], names: Sequence[str]
) -> list[tuple[float, float] | None]:
    """Per-panel limits: given ones as floats, ``None`` where the exact min/max is to be used."""
    n = len(movies)
    if limits is None:
        return [None] * n
    if isinstance(limits, Mapping):
        unknown = set(limits) - set(names)
        if unknown:
            raise OptionError(
                f"limits has keys {sorted(unknown)} that are not panels; panels are {list(names)}"
            )
        return [None if limits.get(nm) is None else _pair(limits[nm]) for nm in names]
    arr = list(limits)
    if len(arr) == 2 and all(np.ndim(v) == 0 for v in arr):
        return [_pair(arr)] * n
    if len(arr) != n:
        raise OptionError(
            f"limits must be None, one (vmin, vmax) pair, {n} pairs (one per panel) or a dict "
            f"by panel name; got {limits!r}"
        )
    return [None if v is None else _pair(v) for v in arr]


def _pair(v: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError) as exc:
        raise OptionError(
            f"a contrast limit must be a (vmin, vmax) pair of numbers, got {v!r}"
        ) from exc
    return lo, hi


def render_frame(
    panels: Sequence[Any],
    t: int,
    *,
    limits: Any = None,
    contours: np.ndarray | None = None,
    scale: int = 1,
    gap: int = 2,
    contour_color: Sequence[int] = CONTOUR_COLOR,
    plane: int | None = None,
) -> np.ndarray:
    """Frame ``t`` of the movies ``panels`` side by side as an RGB ``uint8`` image.

    Parameters
    ----------
    panels
        Lazy movies (``cd.rcm(model)``...) or any arrays ``(T, d1, d2)`` / ``(T, d1, d2, d3)``
        indexable by ``movie[t]``.
    t
        The frame index (negative counts from the end).
    limits
        ``None`` (each panel's exact ``movie.min`` / ``movie.max``), one ``(vmin, vmax)`` pair for
        all panels, or one pair (or ``None``) per panel.
    contours
        Optional boolean ``(d1, d2)`` mask drawn in ``contour_color`` on every panel (see
        :func:`footprint_contours`).
    scale
        Integer upscaling (each pixel becomes ``scale × scale``).
    gap
        Black columns between panels.
    contour_color
        RGB of the contour pixels.
    plane
        For 3D movies, the ``d3`` plane shown (default the middle one).

    Returns
    -------
    numpy.ndarray
        ``(d1*scale, n*d2*scale + (n-1)*gap, 3)`` ``uint8``, exactly as described in the module
        docstring (gray ``rint(clip((x - vmin)/(vmax - vmin), 0, 1) * 255)``).
    """
    movies = list(panels)
    if not movies:
        raise OptionError("render_frame needs at least one panel")
    lims = _resolve_limits(limits, movies, [str(i) for i in range(len(movies))])
    images = []
    for mv in movies:
        shape = tuple(mv.shape)
        if len(shape) == 4:
            images.append(np.asarray(mv[(t, slice(None), slice(None), _plane(shape[1:], plane))]))
        elif len(shape) == 3:
            _plane(shape[1:], plane)
            images.append(np.asarray(mv[t]))
        else:
            raise OptionError(f"a panel must be (T, d1, d2) or (T, d1, d2, d3), got {shape}")
    limits_full = [
        lim if lim is not None else _limit_of(mv) for lim, mv in zip(lims, movies, strict=True)
    ]
    return compose(
        images, limits_full, contours=contours, scale=scale, gap=gap, contour_color=contour_color
    )


def compose(
    images: Sequence[np.ndarray],
    limits: Sequence[tuple[float, float]],
    *,
    contours: np.ndarray | None = None,
    scale: int = 1,
    gap: int = 2,
    contour_color: Sequence[int] = CONTOUR_COLOR,
) -> np.ndarray:
    """Compose 2D images (one per panel) with their limits into the RGB frame (see module doc)."""
    if int(scale) != scale or scale < 1:
        raise OptionError(f"scale={scale!r} must be a positive integer")
    if int(gap) != gap or gap < 0:
        raise OptionError(f"gap={gap!r} must be a non-negative integer")
    scale, gap = int(scale), int(gap)
    color = np.asarray(contour_color, dtype=np.int64)
    if color.shape != (3,) or color.min() < 0 or color.max() > 255:
        raise OptionError(f"contour_color={contour_color!r} must be an RGB triple of 0..255")
    shapes = {np.shape(im) for im in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise OptionError(f"panels must all be 2D frames of one shape, got {sorted(shapes)}")
    d1, d2 = next(iter(shapes))
    if contours is not None:
        contours = np.asarray(contours, dtype=bool)
        if contours.shape != (d1, d2):
            raise OptionError(f"contours must be a ({d1}, {d2}) mask, got {contours.shape}")
    n = len(images)
    pw = d2 * scale
    out = np.zeros((d1 * scale, n * pw + (n - 1) * gap, 3), dtype=np.uint8)
    for p, (im, (vmin, vmax)) in enumerate(zip(images, limits, strict=True)):
        rgb = np.repeat(gray_levels(im, vmin, vmax)[..., None], 3, axis=2)
        if contours is not None:
            rgb[contours] = color.astype(np.uint8)
        if scale > 1:
            rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
        x0 = p * (pw + gap)
        out[:, x0 : x0 + pw] = rgb
    return out


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
        self._limits: tuple[tuple[float, float], ...] | None = None
        # validate rendering options now rather than at the first frame
        compose(
            [np.zeros((1, 1))],
            [(0.0, 1.0)],
            scale=scale,
            gap=gap,
            contour_color=contour_color,
        )

    # ------------------------------------------------------------------ frames
    @property
    def limits(self) -> tuple[tuple[float, float], ...]:
        """Per-panel ``(vmin, vmax)``: the given ones, else the movie's exact min / max."""
        if self._limits is None:
            self._limits = tuple(
                lim if lim is not None else _limit_of(mv)
                for lim, mv in zip(self._given_limits, self.movies, strict=True)
            )
        return self._limits

    def __len__(self) -> int:
        return len(self.times)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, 3)`` of a rendered frame."""
        d1, d2 = self.movies[0].shape[1:3]
        n = len(self.movies)
        return (d1 * self.scale, n * d2 * self.scale + (n - 1) * self.gap, 3)

    def frame(self, t: int) -> np.ndarray:
        """Movie frame ``t`` (a frame index, not a slider position) rendered as RGB ``uint8``."""
        return render_frame(
            self.movies,
            t,
            limits=self.limits,
            contours=self.contours,
            scale=self.scale,
            gap=self.gap,
            contour_color=self.contour_color,
            plane=self.plane,
        )

    def iter_frames(self, times: Any = None) -> Iterator[np.ndarray]:
        """Rendered frames one at a time (``times``: frame indices, default :attr:`times`)."""
        for t in self.times if times is None else _times(times, self.movies[0].shape[0]):
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
        times = self.times if frames is None else _times(frames, self.movies[0].shape[0])
        return _write_movie(
            self,
            Path(path),
            times,
            fps=fps,
            overwrite=overwrite,
            quality=quality,
            progress=progress,
        )


def _times(frames: Any, T: int) -> np.ndarray:
    """Frame indices from ``None`` / a slice / ints / a boolean mask (validated)."""
    if frames is None:
        return np.arange(T, dtype=np.int64)
    if isinstance(frames, slice):
        out = np.arange(T, dtype=np.int64)[frames]
    else:
        arr = np.asarray(frames)
        if arr.dtype == bool:
            if arr.shape != (T,):
                raise OptionError(f"a boolean frames mask must have shape ({T},), got {arr.shape}")
            out = np.flatnonzero(arr).astype(np.int64)
        elif arr.dtype.kind in "iu" and arr.ndim <= 1:
            out = arr.astype(np.int64).reshape(-1)
            if out.size and (out.min() < -T or out.max() >= T):
                raise OptionError(f"frames {frames!r} holds indices outside 0..{T - 1} (T={T})")
            out = np.where(out < 0, out + T, out)
        else:
            raise OptionError(
                f"frames must be None, a slice, int indices or a boolean mask; got {frames!r}"
            )
    if out.size == 0:
        raise OptionError(f"frames={frames!r} selects no frames of the T={T}")
    return out


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

    Returns
    -------
    Viewer
        Displays itself as a slider widget in a notebook; ``viewer.frame(t)`` renders a frame,
        ``viewer.save("out.mp4")`` writes a movie.

    Notes
    -----
    Nothing is computed up front. The first frame shown computes the exact limits (free for
    ``"rcm"``, from the factors; one streaming pass over ``Y`` for ``"raw"`` and
    ``"residuals"``, cached on the movies); every frame after that computes only ``movie[t]``
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
            titles.append("rcm + background" if movies[-1].kind == "rcm+rcb" else p)
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
        times=_times(frames, model.T),
        limits=limits,
        contours=mask,
        scale=scale,
        gap=gap,
        contour_color=contour_color,
        plane=plane,
        fr=model.fr,
    )


# ---------------------------------------------------------------------------------------------
# Widgets
# ---------------------------------------------------------------------------------------------


def _png(frame: np.ndarray) -> bytes:
    import io

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
        label.value = f"t = {t}   |   " + "   |   ".join(viewer.titles)

    slider.observe(update, names="value")
    update(0)
    return slider, play, label


def _image_widget(viewer: Viewer) -> Any:
    widgets = _require("ipywidgets", "the viewer widget")
    image = widgets.Image(format="png")
    shown: dict[str, Any] = {}

    def show(t: int) -> None:
        image.value = _png(viewer.frame(t))
        _set_current(shown, t)

    slider, play, label = _controls(viewer, show)
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
    for ax, name, im, (vmin, vmax) in zip(axes, viewer.titles, frames, viewer.limits, strict=True):
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

    slider, play, label = _controls(viewer, show)
    box = widgets.VBox([widgets.HBox([play, slider, label]), canvas if out is None else out])
    box.slider = slider
    box.display_widget = canvas if out is None else out
    box.figure = fig
    box.images = images
    box.viewer = viewer
    shown["box"] = box
    _set_current(shown, shown["t"])
    return box


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


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


def _write_movie(
    viewer: Viewer,
    path: Path,
    times: np.ndarray,
    *,
    fps: float | None,
    overwrite: bool,
    quality: float,
    progress: bool,
) -> Path:
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise OptionError(f"path {str(path)!r} must end in .mp4 or .gif (the format to write)")
    if path.exists() and not overwrite:
        raise MovieExistsError(
            f"{path} exists; pass overwrite=True to replace it, or choose another path."
        )
    if path.is_dir():
        raise MovieExistsError(f"{path} is a directory; choose a file path ending in {suffix}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first")
    fps = float(fps if fps is not None else (viewer.fr or 30.0))
    if not fps > 0:
        raise OptionError(f"fps={fps!r} must be positive")
    if suffix == ".mp4":
        if not 1 <= quality <= 10:
            raise OptionError(f"quality={quality!r} must be in 1..10")
        _require("imageio_ffmpeg", "writing .mp4")
    else:
        _require("PIL.Image", "writing .gif")
    from tqdm.auto import tqdm

    _ = viewer.limits  # exact limits first (may take one pass over Y), outside the bar
    # written under a hidden name, renamed when complete (a failed write leaves nothing)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        with tqdm(total=len(times), desc=path.name, unit="frame", disable=not progress) as bar:

            def frames() -> Iterator[np.ndarray]:
                for t in times:
                    yield viewer.frame(int(t))
                    bar.update(1)

            if suffix == ".mp4":
                _write_mp4(tmp, frames(), viewer.frame_shape, fps, quality)
            else:
                _write_gif(tmp, frames(), fps)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_mp4(
    path: Path, frames: Iterator[np.ndarray], shape: tuple[int, ...], fps: float, quality: float
) -> None:
    import imageio_ffmpeg

    H, W = shape[0], shape[1]
    H2, W2 = H + H % 2, W + W % 2
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (W2, H2),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=quality,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        buf = np.zeros((H2, W2, 3), dtype=np.uint8)
        for frame in frames:
            buf[:H, :W] = frame
            writer.send(np.ascontiguousarray(buf))
    finally:
        writer.close()


def palette_frame(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index (H, W) uint8, palette (n, 3) uint8)`` with ``palette[index]`` ≈ ``frame``.

    Exact when the frame has at most 256 colours. Otherwise the rarest gray levels (``r = g =
    b``) are dropped and their pixels take the nearest kept gray level.
    """
    f = np.asarray(frame, dtype=np.uint8)
    code = (f[..., 0].astype(np.uint32) << 16) | (f[..., 1].astype(np.uint32) << 8) | f[..., 2]
    uniq, inv, counts = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    if uniq.size > 256:
        r, g, b = (uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255
        gray = (r == g) & (g == b)
        n_drop = uniq.size - 256
        gray_idx = np.flatnonzero(gray)
        if gray_idx.size < n_drop:
            raise OptionError(
                f"a frame has {int((~gray).sum())} distinct non-gray colours; a GIF holds 256"
            )
        order = gray_idx[np.argsort(counts[gray_idx], kind="stable")]
        drop = np.zeros(uniq.size, dtype=bool)
        drop[order[:n_drop]] = True
        kept_gray = np.flatnonzero(gray & ~drop)
        remap = np.arange(uniq.size)
        levels = r[kept_gray].astype(np.int64)
        for i in np.flatnonzero(drop):
            remap[i] = kept_gray[np.argmin(np.abs(levels - int(r[i])))]
        keep = np.flatnonzero(~drop)
        new_pos = np.full(uniq.size, -1, dtype=np.int64)
        new_pos[keep] = np.arange(keep.size)
        inv = new_pos[remap][inv]
        uniq = uniq[keep]
    palette = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=-1)
    return inv.reshape(f.shape[:2]).astype(np.uint8), palette.astype(np.uint8)


def _write_gif(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    from PIL import Image

    def paletted(frame: np.ndarray) -> Any:
        index, palette = palette_frame(frame)
        im = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
        im.putpalette(palette.ravel().tobytes(), rawmode="RGB")
        return im

    it = iter(frames)
    first = paletted(next(it))
    duration = max(20, round(1000.0 / fps / 10.0) * 10)  # GIF delays are 1/100 s
    first.save(
        path,
        format="GIF",
        save_all=True,
        append_images=(paletted(f) for f in it),
        duration=duration,
        loop=0,
    )
