"""Lazy movies: RCM ``A·C``, RCB (``b·f`` or CNMF-E's ring), residuals, the raw movie, and any
sum, difference or scalar multiple of them.

A :class:`Movie` is its :class:`~caiman_dask._description.Description` (what it is made of),
a dtype and a time chunking; everything else reads the description:

- ``movie[key]`` pushes the index down (:mod:`caiman_dask._frames`): it slices the traces and
  ``Y`` in time first (and the footprints in space for crops), multiplies only that, and
  returns a C-contiguous NumPy array;
- ``movie.data`` is one ``blockwise`` dask graph over time chunks (:mod:`caiman_dask._graph`);
  building it computes nothing and embeds no factor;
- ``movie.min`` / ``movie.max`` and :func:`caiman_dask.project` are exact
  (:mod:`caiman_dask._statistics`);
- ``shape``, ``dtype``, ``ndim``, ``size``, ``len()`` serve viewers without scanning the movie;
- ``+``, ``-``, unary ``-``, ``*`` / ``/`` by a number combine movies of one model into a new
  movie: ``cd.rcm(m) + cd.rcb(m)`` is CaImAn's "denoised" movie, ``cd.raw(m) - cd.rcb(m)`` the
  background-subtracted one.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from functools import cached_property
from typing import Any

import dask.array as da
import numpy as np

from . import _statistics
from ._description import (
    Description,
    lowrank_description,
    raw_description,
    rcm_description,
    residual_description,
    ring_description,
)
from ._frames import Frames
from ._graph import movie_graph
from ._index import Crop, crop_of, full_crop, normalize_key, time_positions
from ._io import default_frame_chunk
from ._model import TRACE_NAMES, CNMFModel, Components
from ._optional import require
from ._options import choose
from .errors import (
    ComponentError,
    DenseMovieError,
    EmptyComponentsWarning,
    ExpressionError,
    ModelMismatchError,
    OptionError,
    ShapeMismatchError,
)

__all__ = ["RCB", "RCM", "Movie", "Raw", "Residuals", "raw", "rcb", "rcm", "residuals"]


class Movie:
    """A lazy movie ``(T, *dims)`` of a CNMF model (see the module docstring).

    Build movies with :func:`rcm`, :func:`rcb`, :func:`residuals`, :func:`raw` and combine
    them with ``+``, ``-`` and ``*``; do not call the constructor directly.

    Attributes
    ----------
    description : Description
        What the movie is made of: its factored part and its streaming part.
    model : CNMFModel
        The model the movie belongs to.
    kind : str
        A short label (``"rcm"``, ``"residuals"``, ``"rcm + rcb"``...).
    """

    #: NumPy defers arithmetic with a movie to the movie (``np.float64(2) * movie`` is a movie,
    #: not a dense array made through ``__array__``).
    __array_ufunc__ = None

    def __init__(
        self,
        description: Description,
        *,
        dtype: Any,
        frame_chunk: int | None = None,
        kind: str = "movie",
    ) -> None:
        self.description = description
        self.model: CNMFModel = description.model
        self._dtype = np.dtype(dtype)
        if self._dtype.kind != "f":
            raise OptionError(f"dtype must be a floating type (float32 or float64), got {dtype}")
        self._frame_chunk = frame_chunk
        self.kind = kind

    # ------------------------------------------------------------------ array protocol
    @property
    def shape(self) -> tuple[int, ...]:
        """``(T, *dims)``."""
        return (self.model.T, *self.model.dims)

    @property
    def dtype(self) -> np.dtype:
        """Output dtype (float64 when any factor it uses is float64, else float32, unless
        chosen)."""
        return self._dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self.model.dims)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        return self.model.T

    def __repr__(self) -> str:
        return (
            f"<caiman_dask.{type(self).__name__} {self.kind} shape={self.shape} "
            f"dtype={self.dtype} ({self.nbytes / 2**30:.2f} GiB if dense)>"
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The dense movie, for ``np.asarray(movie)`` on small movies only.

        Raises
        ------
        DenseMovieError
            The dense movie would exceed :func:`max_dense_bytes` (1 GiB unless
            ``CAIMAN_DASK_MAX_DENSE_BYTES`` says otherwise). Libraries that wrap an array by
            calling ``np.asarray`` on it (``xr.DataArray(movie)``...) would otherwise compute
            the whole movie into memory; ``movie[...]`` (explicit indexing) is never refused.
        """
        limit = max_dense_bytes()
        if self.nbytes > limit:
            raise DenseMovieError(
                f"np.asarray(movie) would compute the whole {self.kind} movie {self.shape} "
                f"{self.dtype} into memory: {self.nbytes / 2**30:.2f} GiB, above the limit of "
                f"{limit / 2**30:.2f} GiB ({MAX_DENSE_ENV}). Use movie.data (a dask array), "
                "movie.to_xarray() (a dask-backed xarray.DataArray), or index what you need "
                "(movie[t], movie[a:b]); to allow it, raise the limit "
                f"({MAX_DENSE_ENV}=<bytes> or 'inf')."
            )
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def to_xarray(self, *, name: str | None = None) -> Any:
        """The movie as a dask-backed ``xarray.DataArray`` (builds a graph, computes nothing).

        Dims are ``("t", "y", "x")`` for 2D models and ``("t", "z", "y", "x")`` for 3D ones,
        in the movie's axis order ``(T, d1, d2[, d3])`` — the axis names of the zarr store's
        OME metadata, so ``xr.open_zarr(store, group="rcm")["0"]`` has the same dims. The
        ``t`` coordinate is the frame time in seconds, ``t / model.fr``, when the frame rate is
        known (no coordinate otherwise). Attributes: ``kind``, ``long_name``, ``fr`` (Hz,
        when known) and, only if they are already known (cached; never computed for this),
        the exact ``min`` / ``max``.

        Examples
        --------
        >>> import caiman_dask as cd
        >>> m = cd.synthetic(dims=(32, 40), T=50, K=6, seed=0)
        >>> cd.rcm(m).to_xarray().dims
        ('t', 'y', 'x')
        """
        xr = require("xarray", "Movie.to_xarray()")
        dims = ("t", "y", "x") if len(self.model.dims) == 2 else ("t", "z", "y", "x")
        attrs: dict[str, Any] = {"kind": self.kind, "long_name": f"caiman_dask {self.kind} movie"}
        coords: dict[str, Any] = {}
        fr = self.model.fr
        if fr:
            attrs["fr"] = float(fr)
            t = np.arange(self.shape[0], dtype=np.float64) / float(fr)
            coords["t"] = ("t", t, {"units": "s", "long_name": "time"})
        known = _statistics.cached_min_max(self)
        if known is not None:
            attrs["min"], attrs["max"] = float(known[0]), float(known[1])
        label = name if name is not None else self.kind
        return xr.DataArray(self.data, dims=dims, coords=coords, name=label, attrs=attrs)

    # ------------------------------------------------------------------ frames
    @cached_property
    def _engine(self) -> Frames:
        return Frames(self.description, self._dtype)

    def __getitem__(self, key: Any) -> Any:
        """NumPy frames for any basic index, int arrays / boolean masks in time, ``...``.

        The index is pushed down: only the requested frames (and, for crops, pixels) are
        computed. Advanced indices on spatial axes are applied after computing full frames.
        """
        tkey, spatial = normalize_key(key, self.shape)
        times, tsel = time_positions(tkey, self.shape[0])
        if all(isinstance(k, slice | int) for k in spatial):
            crop = crop_of(spatial, self.model.dims)
            tail = tuple(0 if d else slice(None) for d in crop.drop)
            out = self._frames(times, crop)[(tsel, *tail)]
        else:
            out = self._frames(times, full_crop(self.model.dims))[(tsel, *spatial)]
        if out.ndim == 0:
            return out[()]
        return out if out.flags.c_contiguous else np.ascontiguousarray(out)

    def _frames(self, times: np.ndarray, crop: Crop) -> np.ndarray:
        """Frames ``times`` restricted to ``crop``, ``(n, *crop.shape)``."""
        return self._engine.get(times, crop)

    # ------------------------------------------------------------------ dask
    @property
    def time_chunks(self) -> tuple[int, ...]:
        """Time chunks of ``.data`` (the movie's chunks when there is one)."""
        m = self.model
        if self._frame_chunk is None and m.Y is not None:
            return tuple(int(c) for c in m.Y.chunks[0])
        frames = self._frame_chunk or default_frame_chunk(m.dims, self._dtype.itemsize)
        full, rest = divmod(m.T, frames)
        return (frames,) * full + ((rest,) if rest else ())

    @cached_property
    def data(self) -> da.Array:
        """The movie as a dask array ``(T, *dims)``: one ``blockwise`` layer over time chunks.

        Building it computes nothing; names are deterministic; factors enter as dask arrays.
        """
        label = self.kind if self.kind.isidentifier() else "movie"
        return movie_graph(self.description, self._dtype, self.time_chunks, label)

    # ------------------------------------------------------------------ statistics
    @property
    def min(self) -> float:
        """Minimum over the whole movie (exact; NaN ignored; see :func:`caiman_dask.project`)."""
        return _statistics.min_max(self)[0]

    @property
    def max(self) -> float:
        """Maximum over the whole movie (exact; NaN ignored; see :func:`caiman_dask.project`)."""
        return _statistics.min_max(self)[1]

    # ------------------------------------------------------------------ expressions
    def _combine(self, other: Any, sign: float, symbol: str) -> Movie:
        if not isinstance(other, Movie):
            raise ExpressionError(
                f"a movie can be added to or subtracted from another movie of the same model "
                f"only, not a {type(other).__name__}; multiply by a number with '*'."
            )
        if other.shape != self.shape:
            raise ModelMismatchError(
                f"cannot combine movies of shapes {self.shape} and {other.shape}: a movie "
                "expression combines movies of one model."
            )
        desc = self.description.plus(other.description.scaled(sign))
        return Movie(
            desc,
            dtype=np.result_type(self._dtype, other._dtype),
            frame_chunk=self._frame_chunk,
            kind=f"{_operand(self.kind)} {symbol} {_operand(other.kind)}",
        )

    def _scale(self, s: Any, symbol: str = "*") -> Movie:
        if isinstance(s, Movie):
            raise ExpressionError(
                "the product of two movies is not a linear movie; movies can be added, "
                "subtracted and multiplied by numbers."
            )
        if isinstance(s, bool | np.bool_) or not isinstance(s, numbers.Real):
            raise ExpressionError(
                f"a movie can be multiplied by a real number only, not a {type(s).__name__}; "
                "for per-pixel or per-frame weights use movie.data (a dask array)."
            )
        value = float(s)
        if symbol == "/":
            if value == 0.0:
                raise OptionError("a movie divided by 0 is not a movie (every frame inf/NaN)")
            value = 1.0 / value
        if not math.isfinite(value):
            raise OptionError(
                f"a movie can be multiplied by a finite number only, got {s!r}; NaN or inf would "
                "make every frame NaN."
            )
        return Movie(
            self.description.scaled(value),
            dtype=self._dtype,
            frame_chunk=self._frame_chunk,
            kind=f"{value:g}·{_operand(self.kind)}",
        )

    def __add__(self, other: Any) -> Movie:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: Any) -> Movie:
        return self._combine(other, -1.0, "-")

    def __radd__(self, other: Any) -> Movie:
        return self._combine(other, 1.0, "+")

    def __rsub__(self, other: Any) -> Movie:
        raise ExpressionError(
            f"a {type(other).__name__} minus a movie is not a movie: only movies of one model "
            "are added and subtracted."
        )

    def __neg__(self) -> Movie:
        return Movie(
            self.description.scaled(-1.0),
            dtype=self._dtype,
            frame_chunk=self._frame_chunk,
            kind=f"-{_operand(self.kind)}",
        )

    def __pos__(self) -> Movie:
        return self

    def __mul__(self, s: Any) -> Movie:
        return self._scale(s)

    def __rmul__(self, s: Any) -> Movie:
        return self._scale(s)

    def __truediv__(self, s: Any) -> Movie:
        return self._scale(s, "/")


#: The environment variable that sets :func:`max_dense_bytes`.
MAX_DENSE_ENV = "CAIMAN_DASK_MAX_DENSE_BYTES"
#: Default limit of ``np.asarray(movie)``: 1 GiB.
MAX_DENSE_DEFAULT = 2**30


def max_dense_bytes() -> float:
    """The largest movie ``np.asarray(movie)`` builds, in bytes: ``CAIMAN_DASK_MAX_DENSE_BYTES``
    (a number of bytes, or ``inf`` for no limit), default 1 GiB. Read at every call."""
    raw = os.environ.get(MAX_DENSE_ENV, "").strip()
    if not raw:
        return float(MAX_DENSE_DEFAULT)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise OptionError(
            f"{MAX_DENSE_ENV}={raw!r} is not a number of bytes >= 0: set it to e.g. "
            f"{MAX_DENSE_DEFAULT} (1 GiB) or 'inf' (no limit), or unset it."
        )
    return value


def _operand(kind: str) -> str:
    """A movie's label as an operand (compound expressions in parentheses)."""
    return f"({kind})" if " " in kind else kind


# ---------------------------------------------------------------------------------------------
# The named movies
# ---------------------------------------------------------------------------------------------


class RCM(Movie):
    """The reconstructed movie ``A[:, idx] · traces[idx]`` (see :func:`rcm`)."""

    def __init__(
        self,
        model: CNMFModel,
        idx: np.ndarray,
        traces: da.Array,
        traces_name: str,
        *,
        dtype: Any,
        frame_chunk: int | None,
    ) -> None:
        desc = rcm_description(model, idx, traces, traces_name)
        super().__init__(desc, dtype=dtype, frame_chunk=frame_chunk, kind="rcm")
        self.idx = idx
        self.traces = traces
        self.traces_name = traces_name


class RCB(Movie):
    """The reconstructed background (see :func:`rcb`): low rank ``b · f``, or CNMF-E's ring
    model ``b0 + W·(Y − A·C − b0)``."""

    def __init__(self, model: CNMFModel, *, dtype: Any, frame_chunk: int | None) -> None:
        desc = ring_description(model) if model.background == "ring" else lowrank_description(model)
        super().__init__(desc, dtype=dtype, frame_chunk=frame_chunk, kind="rcb")


class Residuals(Movie):
    """The residual movie ``Y − A·C − B`` (see :func:`residuals`)."""

    def __init__(self, model: CNMFModel, *, dtype: Any, frame_chunk: int | None) -> None:
        desc = residual_description(model)
        super().__init__(desc, dtype=dtype, frame_chunk=frame_chunk, kind="residuals")


class Raw(Movie):
    """The movie ``Y`` itself, with the interface of the reconstructions (see :func:`raw`)."""

    def __init__(self, model: CNMFModel, *, dtype: Any, frame_chunk: int | None) -> None:
        super().__init__(raw_description(model), dtype=dtype, frame_chunk=frame_chunk, kind="raw")


# ---------------------------------------------------------------------------------------------
# Public constructors
# ---------------------------------------------------------------------------------------------


def _default_dtype(*arrays: Any) -> np.dtype:
    dts = [np.dtype(a.dtype) for a in arrays if a is not None]
    return np.result_type(np.float32, *dts)


def _needs_y(model: CNMFModel, what: str) -> None:
    if model.Y is None:
        raise ComponentError(
            f"{what} needs the movie Y, which this model does not have: pass movie='...mmap' to "
            "cd.open_cnmf (or Y= to cd.from_arrays)."
        )


def rcm(
    model: CNMFModel,
    components: Components = "all",
    *,
    traces: Any = "C",
    dtype: Any = None,
    frame_chunk: int | None = None,
) -> RCM:
    """The reconstructed movie ``A[:, idx] · traces[idx]``, lazily, ``(T, *dims)``.

    Parameters
    ----------
    model
        A :class:`CNMFModel`.
    components
        ``"all"``, ``"good"``, ``"bad"``, int indices, a slice or a boolean mask.
    traces
        ``"C"`` (default), ``"F_dff"``, ``"S"``, ``"YrA"``, or any ``(K, T)`` array (NumPy or
        dask) used in place of ``C``.
    dtype
        Output dtype; default float64 when ``A`` or the traces are float64, else float32.
    frame_chunk
        Frames per chunk of ``.data`` (default: the movie's chunks, else about 64 MiB).

    Returns
    -------
    RCM
        Index it (``rcm[t]``, ``rcm[10:50, 5:20]``) for NumPy frames, or use ``.data``.

    Warns
    -----
    EmptyComponentsWarning
        The selection is empty; the movie is exactly zero.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(32, 40), T=50, K=6, seed=0)
    >>> movie = cd.rcm(m, "good")
    >>> movie[3].shape
    (32, 40)
    """
    idx = model.components(components)
    if isinstance(traces, str):
        name = choose("traces", traces, TRACE_NAMES, hint="Or pass a (K, T) array.")
        tr = getattr(model, name)
        if tr is None:
            raise ComponentError(f"traces={traces!r}: this model has no {traces}")
    else:
        tr = (
            traces if isinstance(traces, da.Array) else da.from_array(np.asarray(traces), chunks=-1)
        )
        if tuple(tr.shape) != (model.K, model.T):
            raise ShapeMismatchError(
                f"traces have shape {tuple(tr.shape)} but the model has K={model.K} components "
                f"and T={model.T} frames: pass a (K, T) array (rows for all components; the "
                "selection picks rows)."
            )
        name = tr.name
    if idx.size == 0:
        warnings.warn(
            f"component selection {components!r} is empty: the reconstructed movie is exactly "
            "zero everywhere.",
            EmptyComponentsWarning,
            stacklevel=2,
        )
    dt = np.dtype(dtype) if dtype is not None else _default_dtype(model.A, tr)
    return RCM(model, idx, tr, name, dtype=dt, frame_chunk=frame_chunk)


def rcb(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> RCB:
    """The reconstructed background, lazily, ``(T, *dims)``.

    Low rank: ``b · f``; CNMF-E's ring model: ``b0 + W·(Y − A·C − b0)`` (needs the movie).

    Raises
    ------
    ComponentError
        The model has no background (neither ``b``/``f`` nor ``W``/``b0``), or a ring
        background without its movie ``Y``.
    """
    kind = model.background
    if kind == "lowrank":
        dt = np.dtype(dtype) if dtype is not None else _default_dtype(model.b, model.f)
    elif kind == "ring":
        _needs_y(model, "the CNMF-E ring background b0 + W·(Y − A·C − b0)")
        dt = _ring_dtype(model, dtype)
    else:
        raise ComponentError(
            "this model has no background: neither b and f (low rank) nor W and b0 (CNMF-E "
            "ring). Build it with cd.from_arrays(..., b=..., f=...)."
        )
    return RCB(model, dtype=dt, frame_chunk=frame_chunk)


def _ring_dtype(model: CNMFModel, dtype: Any) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    return _default_dtype(model.A, model.C, model.W, model.b0)


def raw(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> Raw:
    """The movie ``Y`` as a lazy movie (same indexing, ``.data``, projections as the others).

    ``dtype`` defaults to the movie's own floating dtype (float32 for CaImAn memmaps).

    Raises
    ------
    ComponentError
        The model has no movie ``Y``.
    """
    _needs_y(model, "the raw movie")
    dt = np.dtype(dtype) if dtype is not None else _default_dtype(model.Y)
    return Raw(model, dtype=dt, frame_chunk=frame_chunk)


def residuals(model: CNMFModel, *, dtype: Any = None, frame_chunk: int | None = None) -> Residuals:
    """The residual movie ``Y − A·C − B``, lazily, ``(T, *dims)``.

    Raises
    ------
    ComponentError
        The model has no movie ``Y`` (pass ``movie=`` to :func:`open_cnmf`).
    """
    _needs_y(model, "residuals")
    if dtype is not None:
        dt = np.dtype(dtype)
    elif model.background == "ring":
        dt = _ring_dtype(model, None)
    else:
        dt = _default_dtype(model.A, model.C, model.b, model.f)
    return Residuals(model, dtype=dt, frame_chunk=frame_chunk)
