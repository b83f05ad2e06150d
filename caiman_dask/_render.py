"""The compositor of the viewer: gray levels, panels side by side, footprint contours.

Pure NumPy; every pixel value is documented so it can be recomputed independently.

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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse

from ._model import CNMFModel, Components
from .errors import OptionError

__all__ = ["CONTOUR_COLOR", "compose", "footprint_contours", "gray_levels", "render_frame"]

#: Default contour colour (RGB).
CONTOUR_COLOR: tuple[int, int, int] = (255, 0, 0)


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
