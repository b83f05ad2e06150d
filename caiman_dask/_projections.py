"""Projections over time: mean, std, min, max and CaImAn's correlation image — exact.

- RCM ``A·C`` and the low-rank RCB ``b·f`` are projected from their structure, never
  materialising the movie (:mod:`caiman_dask._structured`): mean ``A·mean(C)``, variance
  ``a_p Σ a_pᵀ`` with ``Σ = cov(C)``, min / max in closed form under one footprint and by an
  exact pass over the few rows ``C[S_p]`` where footprints overlap, correlation images from the
  covariances of neighbouring pixels.
- Residuals, the ring background and the raw movie take **one** streaming dask pass that
  accumulates every statistic at once (float64, Chan merging; :mod:`caiman_dask._streaming`).
  The merged statistics are cached on the movie object, so asking for other kinds (or
  ``movie.min`` / ``movie.max``) later costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import dask
import numpy as np
import scipy.sparse

from . import _streaming, _structured
from ._compute import compute
from ._movies import RCB, RCM, Movie, Residuals
from .errors import OptionError

__all__ = ["KINDS", "Kind", "movie_min_max", "project"]

Kind = Literal["mean", "std", "min", "max", "corr"]
#: The projections :func:`project` computes.
KINDS: tuple[str, ...] = ("mean", "std", "min", "max", "corr")
_WHOLE = ("all",)
#: Blocks merged per task of the tree reduction.
_FAN_IN = 8


def _kinds(kind: str | Iterable[str]) -> tuple[str, ...]:
    ks = (kind,) if isinstance(kind, str) else tuple(kind)
    bad = [k for k in ks if k not in KINDS]
    if bad or not ks:
        raise OptionError(
            f"projection kind {bad[0] if bad else kind!r} is not one of {list(KINDS)}"
        )
    return ks


def _window(frames: Any, T: int) -> tuple[Any, np.ndarray | slice]:
    """Validate ``frames``; return a hashable key and the index to apply along time."""
    if frames is None:
        return _WHOLE, slice(None)
    if isinstance(frames, slice):
        start, stop, step = frames.start, frames.stop, frames.step
        for name, v in (("start", start), ("stop", stop)):
            if v is not None and not -T <= v <= T:
                raise OptionError(
                    f"frames={frames} is out of range: {name}={v} but the movie has T={T} "
                    f"frames (valid: -{T}..{T})"
                )
        sel = np.arange(T)[frames]
        if sel.size == 0:
            raise OptionError(
                f"frames={frames} selects no frames of the T={T}; a projection "
                "needs at least one frame"
            )
        if step in (None, 1):
            return ("slice", int(sel[0]), int(sel[-1]) + 1), slice(int(sel[0]), int(sel[-1]) + 1)
        return ("idx", sel.tobytes()), sel
    arr = np.asarray(frames)
    if arr.dtype == bool:
        if arr.shape != (T,):
            raise OptionError(f"a boolean frames mask must have shape ({T},), got {arr.shape}")
        arr = np.flatnonzero(arr)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise OptionError(
            f"frames must be None, a slice, 1-D int indices or a boolean mask; got {frames!r}"
        )
    if arr.size == 0:
        raise OptionError("frames selects no frames; a projection needs at least one frame")
    if arr.min() < -T or arr.max() >= T:
        raise OptionError(f"frames holds indices outside 0..{T - 1} (T={T})")
    arr = np.where(arr < 0, arr + T, arr).astype(np.int64)
    return ("idx", arr.tobytes()), arr


# ---------------------------------------------------------------------------------------------
# structured: RCM and low-rank RCB
# ---------------------------------------------------------------------------------------------


def _structured_factors(mv: Movie) -> tuple[Any, np.ndarray]:
    """``(spatial factor in C pixel order, traces)`` of a structured movie, in float64."""
    cache = mv.__dict__.setdefault("_structured_cache", {})
    if "factors" not in cache:
        h = mv.model._host
        if isinstance(mv, RCM):
            A = scipy.sparse.csr_matrix(h.A[:, mv.idx], dtype=np.float64)
            C = mv.traces_selected
        elif isinstance(mv, RCB):
            assert h.b is not None and h.f is not None
            A = np.asarray(h.b, dtype=np.float64)
            C = np.asarray(h.f, dtype=np.float64)
        else:  # pragma: no cover - guarded by the caller
            raise TypeError(type(mv).__name__)
        cache["factors"] = (A, np.asarray(C, dtype=np.float64))
        cache["groups"] = _structured.footprint_groups(A)
    return cache["factors"]


def _structured_project(mv: Movie, kinds: Sequence[str], sel: Any) -> dict[str, np.ndarray]:
    A, C = _structured_factors(mv)
    groups = mv.__dict__["_structured_cache"]["groups"]
    if not (isinstance(sel, slice) and sel == slice(None)):
        C = np.ascontiguousarray(C[:, sel])
    dims = mv.model.dims
    out: dict[str, np.ndarray] = {}
    if "mean" in kinds:
        out["mean"] = _structured.structured_mean(A, C, groups=groups)
    std = None
    if "std" in kinds or "corr" in kinds:
        std = _structured.structured_std(A, C, groups=groups)
        if "std" in kinds:
            out["std"] = std
    if "min" in kinds or "max" in kinds:
        lo, hi = _structured.structured_min_max(A, C, groups=groups)
        if "min" in kinds:
            out["min"] = lo
        if "max" in kinds:
            out["max"] = hi
    if "corr" in kinds:
        assert std is not None
        offsets = _streaming.corr_offsets(len(dims))
        pairs = _structured.structured_cov_pairs(A, C, dims, offsets)
        pairs = {k: np.reshape(v, dims) for k, v in pairs.items()}
        out["corr"] = _streaming.caiman_corr_from_pairs(np.reshape(std**2, dims), pairs, dims)
    return {k: np.reshape(v, dims) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# streaming: residuals, ring background, raw movie
# ---------------------------------------------------------------------------------------------


def whole_movie_stats_key(corr: bool) -> tuple[Any, bool]:
    """The key under which a movie caches the statistics of all its frames."""
    return (_WHOLE, corr)


def _stats_graph(mv: Movie, sel: Any, corr: bool) -> Any:
    """A delayed tree reduction of :func:`_streaming.block_stats` over the movie's blocks."""
    whole = isinstance(sel, slice) and sel == slice(None)
    if type(mv) is Residuals and isinstance(sel, slice):
        return _tree_merge(mv.stats_parts(corr, None if whole else (sel.start, sel.stop)))
    data = mv.data if whole else mv.data[sel]
    return _stats_graph_of(data, corr)


def _stats_graph_of(data: Any, corr: bool) -> Any:
    """A delayed tree reduction of :func:`_streaming.block_stats` over a dask array's blocks."""
    stats_of = dask.delayed(_streaming.block_stats, pure=True)
    return _tree_merge([stats_of(b, corr=corr) for b in data.to_delayed().ravel()])


def _tree_merge(parts: list[Any]) -> Any:
    """Merge delayed statistics pairwise in a tree of fan-in ``_FAN_IN``."""
    merge = dask.delayed(_streaming.merge_many, pure=True)
    while len(parts) > 1:
        parts = [merge(parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
    return parts[0]


def _cached_stats(mv: Movie, key: Any, corr: bool) -> dict[str, Any] | None:
    cache = mv.__dict__.setdefault("_stats_cache", {})
    hit = cache.get((key, True))
    if hit is None and not corr:
        hit = cache.get((key, False))
    return hit


def _is_structured(mv: Movie) -> bool:
    return type(mv) in (RCM, RCB)


def project(
    movie: Movie | Sequence[Movie],
    kind: Kind | Sequence[Kind] = "mean",
    *,
    frames: Any = None,
    progress: bool | None = None,
) -> Any:
    """Exact projections over time of a lazy movie (or of several movies in one pass).

    Parameters
    ----------
    movie
        A movie from :func:`caiman_dask.rcm`, :func:`~caiman_dask.rcb`,
        :func:`~caiman_dask.residuals` or :func:`~caiman_dask.raw`, or a list of them: the
        streaming ones then share one pass over the movie ``Y``.
    kind
        ``"mean"``, ``"std"`` (population, ddof=0), ``"min"``, ``"max"`` or ``"corr"``
        (CaImAn's ``local_correlations`` image, its conventions included: 8 neighbours in 2D,
        6 face neighbours in 3D, NaN where a pixel or a neighbour it uses is constant), or a
        sequence of them.
    frames
        A time window: ``None`` (all), a slice, int indices or a boolean mask. Empty or
        out-of-range windows raise :class:`~caiman_dask.OptionError`.
    progress
        Show dask's progress bar for streaming passes.

    Returns
    -------
    numpy.ndarray or dict or list
        A float64 image shaped ``dims`` for one kind, a ``{kind: image}`` dict for several,
        and a list of those for a list of movies.

    Notes
    -----
    All results are exact (up to float64 rounding). RCM and low-rank RCB images come from
    the factors' structure and never materialise the movie; residuals, ring backgrounds and
    the raw movie take one streaming pass whose statistics are cached on the movie, so further
    kinds cost nothing (``"corr"`` needs neighbour co-moments: asking for it first makes the
    pass collect them). An empty component selection gives zero images (``"corr"``: NaN, as
    CaImAn would for a constant movie).

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(32, 40), T=60, K=6, seed=0)
    >>> cd.project(cd.rcm(m), "max").shape
    (32, 40)
    >>> sorted(cd.project(cd.residuals(m), ["mean", "std"]))
    ['mean', 'std']
    """
    single = isinstance(movie, Movie)
    movies: list[Movie] = [movie] if single else list(movie)  # type: ignore[list-item]
    for mv in movies:
        if not isinstance(mv, Movie):
            raise OptionError(
                f"project() takes a caiman_dask movie (cd.rcm / cd.rcb / cd.residuals / cd.raw),"
                f" got {type(mv).__name__}"
            )
    kinds = _kinds(kind)
    corr = "corr" in kinds
    results: list[dict[str, np.ndarray] | None] = []
    pending: list[tuple[int, Movie, Any]] = []
    graphs: list[Any] = []
    for i, mv in enumerate(movies):
        key, sel = _window(frames, mv.shape[0])
        if _is_structured(mv):
            results.append(_structured_project(mv, kinds, sel))
            continue
        results.append(None)
        stats = _cached_stats(mv, key, corr)
        if stats is None:
            pending.append((i, mv, key))
            graphs.append(_stats_graph(mv, sel, corr))
        else:
            results[i] = _streaming.finalize(stats, kinds)
    for (i, mv, key), stats in zip(pending, compute(graphs, bool(progress)), strict=True):
        mv.__dict__["_stats_cache"][(key, corr)] = stats
        results[i] = _streaming.finalize(stats, kinds)
    images: list[Any] = [r if not isinstance(kind, str) else r[kind] for r in results]  # type: ignore[index]
    return images[0] if single else images


def movie_min_max(movie: Movie) -> tuple[float, float]:
    """Exact minimum and maximum over a whole movie (cached on the movie)."""
    cached = movie.__dict__.get("_min_max")
    if cached is None:
        img = project(movie, ["min", "max"])
        cached = (float(np.nanmin(img["min"])), float(np.nanmax(img["max"])))
        if math.prod(movie.shape) == 0:  # pragma: no cover - models have T >= 1
            cached = (0.0, 0.0)
        movie.__dict__["_min_max"] = cached
    return cached
