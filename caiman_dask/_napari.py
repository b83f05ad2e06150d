"""napari: a reader plugin (npe2) and :func:`to_napari` for a live session.

Layers (each an ordinary napari layer; the movies are our lazy :class:`~caiman_dask.Movie`
objects, so napari's slider computes ``movie[t]`` by index pushdown, one frame at a time):

- ``raw``, ``rcm + rcb`` (the movie expression ``cd.rcm(m, sel) + cd.rcb(m)``) and
  ``residuals`` images with exact contrast limits: provisional ones (the min / max of
  :data:`~caiman_dask._view.PROVISIONAL_FRAMES` sampled frames) at once, replaced by the exact
  ``min`` / ``max`` when the one background pass ends (:class:`~caiman_dask._view.LiveLimits`;
  ``layer.metadata["caiman_dask"]["limits"]`` says ``"provisional"`` or ``"exact"``);
- ``footprints``: a Labels layer, value ``k + 1`` at the pixels of component ``k`` (0 elsewhere),
  drawn as contours;
- projections as images, from :func:`caiman_dask.project` (exact) or from a store's
  ``projections/`` group.

The reader (``napari.yaml``) opens caiman_dask zarr stores and CaImAn ``cnmf.save()`` HDF5
files: ``napari results.zarr`` or ``viewer.open("cnmf.hdf5", plugin="caiman-dask")``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
import zarr

from ._model import CNMFModel, Components, open_cnmf
from ._movie import Movie, rcb, rcm, residuals
from ._movie import raw as raw_movie
from ._optional import require
from ._statistics import project
from ._store_read import open_zarr, store_info
from ._view import ExactLimits, LiveLimits
from .errors import CaimanDaskError, EmptyComponentsWarning, OptionError

__all__ = ["footprint_labels", "get_reader", "layer_data", "read", "to_napari"]

#: Layer names :func:`to_napari` and the reader produce, in order.
LAYERS: tuple[str, ...] = ("raw", "rcm + rcb", "residuals", "footprints", "projections")

LayerData = tuple[Any, dict[str, Any], str]


def footprint_labels(
    model: CNMFModel, components: Components = "all", *, threshold: float = 0.2
) -> np.ndarray:
    """Labels image ``dims`` (int32): ``k + 1`` where component ``k`` owns the pixel, else 0.

    Component ``k``'s footprint is where ``A[:, k] > threshold * max(A[:, k])`` (as
    :func:`caiman_dask.footprint_contours`); where footprints overlap the pixel goes to the
    component with the largest ``A[p, k] / max(A[:, k])`` (ties: the lower index).
    """
    if not 0 <= threshold < 1:
        raise OptionError(f"threshold={threshold!r} must be in [0, 1) (a fraction of the max)")
    idx = model.components(components)
    A = scipy.sparse.csc_matrix(model._host.A)  # (P, K), C pixel order
    P = A.shape[0]
    best = np.zeros(P, dtype=np.float64)
    out = np.zeros(P, dtype=np.int32)
    for k in np.sort(idx):
        lo, hi = A.indptr[k], A.indptr[k + 1]
        rows, vals = A.indices[lo:hi], np.asarray(A.data[lo:hi], dtype=np.float64)
        if vals.size == 0 or not vals.max() > 0:
            continue
        rel = vals / vals.max()
        keep = (vals > threshold * vals.max()) & (rel > best[rows])
        best[rows[keep]] = rel[keep]
        out[rows[keep]] = k + 1
    return out.reshape(model.dims)


def _quiet(fn: Callable[[], Movie]) -> Movie:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyComponentsWarning)
        return fn()


def _movies(model: CNMFModel, components: Components) -> list[tuple[str, Movie]]:
    idx = model.components(components)
    out: list[tuple[str, Movie]] = []
    if model.Y is not None:
        out.append(("raw", raw_movie(model)))
    fg = _quiet(lambda: rcm(model, idx))
    if model.background != "none":
        out.append(("rcm + rcb", fg + rcb(model)))
    else:
        out.append(("rcm", fg))
    if model.Y is not None:
        res = residuals(model)
        rest = np.setdiff1d(np.arange(model.K), idx)
        out.append(("residuals", res if rest.size == 0 else res + rcm(model, rest)))
    return out


def layer_data(
    model: CNMFModel,
    components: Components = "all",
    *,
    layers: Sequence[str] = LAYERS,
    projections: Sequence[Any] = ("mean", "max"),
    exact_limits: ExactLimits = "background",
    threshold: float = 0.2,
) -> tuple[list[LayerData], LiveLimits]:
    """napari layer data ``(data, kwargs, layer_type)`` for a model, and the live limits of
    its movie layers (provisional now, exact when the pass ends; see :func:`to_napari`)."""
    for name in layers:
        if name not in LAYERS and name != "rcm":
            raise OptionError(f"layers has {name!r}, which is not one of {list(LAYERS)}")
    movies = [(n, mv) for n, mv in _movies(model, components) if n in layers or n == "rcm"]
    live = LiveLimits([mv for _, mv in movies], exact=exact_limits)
    scale = _scale(model)
    out: list[LayerData] = []
    for (name, mv), lim in zip(movies, live.current, strict=True):
        meta = {"caiman_dask": {"movie": name, "limits": live.state, "id": id(live)}}
        kw = {
            "name": name,
            "contrast_limits": _valid(lim),
            "colormap": "gray",
            "multiscale": False,
            "scale": scale,
            "metadata": meta,
        }
        out.append((mv, kw, "image"))
    if "footprints" in layers:
        labels = footprint_labels(model, components, threshold=threshold)
        out.append((labels, {"name": "footprints", "scale": scale[1:], "opacity": 0.8}, "labels"))
    if "projections" in layers and projections:
        base = _quiet(lambda: rcm(model, model.components(components)))
        imgs = project(base, list(projections))
        for kind in projections:
            img = imgs[kind]
            out.append(
                (
                    img,
                    {
                        "name": f"rcm {kind}",
                        "scale": scale[1:],
                        "colormap": "gray",
                        "contrast_limits": _valid(_finite_range(img)),
                        "visible": False,
                    },
                    "image",
                )
            )
    return out, live


def _scale(model: CNMFModel) -> tuple[float, ...]:
    """Layer scale: seconds per frame in time (when the frame rate is known), pixels in space."""
    return (1.0 / model.fr if model.fr else 1.0,) + (1.0,) * len(model.dims)


def _finite_range(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _valid(lim: tuple[float, float]) -> tuple[float, float]:
    """napari needs ``lo < hi`` and finite numbers (a constant movie: a unit range)."""
    lo, hi = float(lim[0]), float(lim[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return (0.0, 1.0)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _apply_limits(layers: Sequence[Any], limits: Sequence[tuple[float, float]]) -> None:
    for layer, lim in zip(layers, limits, strict=True):
        lo, hi = _valid(lim)
        layer.contrast_limits_range = (lo, hi)
        layer.contrast_limits = (lo, hi)
        layer.metadata["caiman_dask"]["limits"] = "exact"


def to_napari(
    model: CNMFModel,
    viewer: Any = None,
    components: Components = "all",
    *,
    layers: Sequence[str] = LAYERS,
    projections: Sequence[Any] = ("mean", "max"),
    exact_limits: ExactLimits = "background",
    threshold: float = 0.2,
) -> tuple[Any, dict[str, Any], LiveLimits]:
    """Add a CNMF result to a napari viewer: movies, footprints and projections as layers.

    Parameters
    ----------
    model
        A :class:`CNMFModel`.
    viewer
        A ``napari.Viewer`` or ``napari.components.ViewerModel`` (default: a new
        ``napari.Viewer()``, which needs Qt).
    components
        The components of the ``rcm + rcb`` layer, of ``footprints`` and of the projections;
        the ``residuals`` layer is ``Y − A_sel·C_sel − B`` so that raw = rcm + rcb + residuals.
    layers
        Which of ``"raw"``, ``"rcm + rcb"``, ``"residuals"``, ``"footprints"``,
        ``"projections"`` to add (``raw`` and ``residuals`` need the movie ``Y``).
    projections
        Kinds of :func:`caiman_dask.project` of the RCM shown as (hidden) images; exact, from
        the factors, never reading ``Y``.
    exact_limits
        ``"background"`` (default): movie layers open at once with provisional limits (the
        min / max of 8 evenly spaced frames) and switch to the exact min / max when one
        background pass over ``Y`` ends; ``"wait"``: exact before returning; ``"request"``:
        only when ``live.wait()`` is called.
    threshold
        Footprint threshold as a fraction of each component's maximum.

    Returns
    -------
    viewer, dict, LiveLimits
        The viewer, its new layers by name, and the live limits (``live.wait()`` blocks
        until the exact limits are applied; ``live.cancel()`` stops the pass).
    """
    if not isinstance(model, CNMFModel):
        raise OptionError(
            f"to_napari() takes a CNMFModel (cd.open_cnmf / cd.open_zarr / cd.from_arrays), "
            f"got {type(model).__name__}"
        )
    if viewer is None:
        napari = require("napari", "cd.to_napari()")
        viewer = napari.Viewer()
    data, live = layer_data(
        model,
        components,
        layers=layers,
        projections=projections,
        exact_limits=exact_limits,
        threshold=threshold,
    )
    added: dict[str, Any] = {}
    for d, kw, kind in data:
        added[kw["name"]] = getattr(viewer, f"add_{kind}")(d, **kw)
    movie_layers = [
        added[kw["name"]] for _, kw, kind in data if "caiman_dask" in kw.get("metadata", {})
    ]
    live.on_exact(_in_main_thread(lambda lims: _apply_limits(movie_layers, lims), viewer))
    if len(model.dims) == 3 and viewer.dims.ndim == 4:
        # show (d1, d2) planes with a d3 slider, as cd.view shows a plane of d3
        viewer.dims.order = (0, 3, 1, 2)
    return viewer, added, live


def _in_main_thread(fn: Callable[[Any], None], viewer: Any) -> Callable[[Any], None]:
    """``fn`` run in Qt's main thread when ``viewer`` has a Qt window, else as it is."""
    if getattr(viewer, "window", None) is None:
        return fn
    superqt = require("superqt.utils", "napari limits from a background thread")
    return superqt.ensure_main_thread(fn)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# The npe2 reader
# ---------------------------------------------------------------------------------------------


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: :func:`read` for a caiman_dask zarr store or a CaImAn
    ``cnmf.save()`` HDF5 file, ``None`` (not ours) otherwise."""
    if not isinstance(path, str | os.PathLike):
        return None
    p = Path(path)
    if p.suffix in (".hdf5", ".h5") and p.is_file():
        return read
    if p.is_dir():
        try:
            store_info(p)
        except (CaimanDaskError, OSError, ValueError, KeyError):
            return None
        return read
    return None


def read(path: Any) -> list[LayerData]:
    """Layers of a store (stored movies with exact limits from its min / max projections,
    projections, footprints from its factors) or of a CaImAn HDF5 file (see
    :func:`layer_data`; exact limits computed in the background and applied to the current
    napari viewer's layers when ready)."""
    p = Path(path)
    if p.is_dir():
        return _read_store(p)
    model = open_cnmf(p)
    data, live = layer_data(model)
    if not live.is_exact:
        live.on_exact(lambda lims: _apply_to_current_viewer(id(live), lims))
    return data


def _apply_to_current_viewer(ident: int, limits: Sequence[tuple[float, float]]) -> None:
    napari = require("napari", "the caiman-dask napari reader")
    viewer = napari.current_viewer()
    if viewer is None:
        return
    mine = [ly for ly in viewer.layers if ly.metadata.get("caiman_dask", {}).get("id") == ident]
    order = {ly.metadata["caiman_dask"]["movie"]: ly for ly in mine}
    _in_main_thread(lambda lims: _apply_limits(list(order.values()), lims[: len(order)]), viewer)(
        limits
    )


def _read_store(path: Path) -> list[LayerData]:
    root: Any = zarr.open_group(str(path), mode="r")
    info = store_info(path)
    fr = info.get("fr")
    out: list[LayerData] = []
    proj: Any = root.get("projections")
    for name in ("rcm", "rcb", "residuals"):
        grp: Any = root.get(name)
        if not isinstance(grp, zarr.Group) or "0" not in grp:
            continue
        arr = da.from_zarr(grp["0"])
        meta: dict[str, Any] = {"caiman_dask": {"movie": name, "limits": "provisional"}}
        kw: dict[str, Any] = {"name": name, "colormap": "gray", "multiscale": False}
        kw["scale"] = (1.0 / fr if fr else 1.0,) + (1.0,) * (arr.ndim - 1)
        lims = _stored_limits(proj, name)
        if lims is not None:
            meta["caiman_dask"]["limits"] = "exact"
        else:  # provisional: 8 evenly spaced frames
            times = np.unique(np.linspace(0, arr.shape[0] - 1, 8).round().astype(int))
            lims = _finite_range(np.asarray(arr[times].compute()))
        kw["contrast_limits"] = _valid(lims)
        kw["metadata"] = meta
        out.append((arr, kw, "image"))
    if isinstance(proj, zarr.Group):
        for mname, mgrp in proj.groups():
            for kind, kgrp in mgrp.groups():
                node: Any = kgrp["0"]
                img = np.asarray(node[...])
                kw = {
                    "name": f"{mname} {kind}",
                    "colormap": "gray",
                    "visible": False,
                    "contrast_limits": _valid(_finite_range(img)),
                }
                out.append((img, kw, "image"))
    if "factors" in root:
        try:
            model = open_zarr(path)
        except (CaimanDaskError, OSError, ValueError):
            model = None
        if model is not None:
            out.append((footprint_labels(model), {"name": "footprints", "opacity": 0.8}, "labels"))
    return out


def _stored_limits(proj: Any, name: str) -> tuple[float, float] | None:
    if not isinstance(proj, zarr.Group) or name not in proj:
        return None
    grp: Any = proj[name]
    if "min" not in grp or "max" not in grp:
        return None
    lo = np.asarray(grp["min"]["0"][...])
    hi = np.asarray(grp["max"]["0"][...])
    if not (np.isfinite(lo).any() and np.isfinite(hi).any()):
        return None
    return float(np.nanmin(lo)), float(np.nanmax(hi))
