"""Indices into movies: NumPy-style keys, spatial crops, and the one frame-window parser.

A movie key is split into a time part and per-axis spatial parts (:func:`normalize_key`); the
time part becomes sorted unique frames plus how to pick the result from them
(:func:`time_positions`), the spatial part a :class:`Crop` pushed down to the factors. Frame
*windows* — ``frames=`` of :func:`caiman_dask.project`, the viewer and the exports — all go
through :func:`frame_window`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FrameIndexError, OptionError

__all__ = [
    "Crop",
    "Window",
    "crop_of",
    "frame_window",
    "normalize_key",
    "time_key",
    "time_positions",
]


@dataclass(frozen=True, eq=False)
class Crop:
    """A spatial selection pushed down to the factors.

    ``pix``: pixel ids in C order (``None`` = the whole frame); ``shape``: the crop's shape
    (axes indexed by an int kept with length 1); ``drop``: axes indexed by an int (dropped from
    the result); ``sel``: per-axis slices that read the crop from a movie.
    """

    pix: np.ndarray | None
    shape: tuple[int, ...]
    drop: tuple[bool, ...]
    sel: tuple[slice, ...] = ()

    @property
    def npix(self) -> int:
        return math.prod(self.shape)

    @property
    def key(self) -> bytes | None:
        """A hashable identity (for caches of per-crop operators)."""
        return None if self.pix is None else self.pix.tobytes()


def full_crop(dims: tuple[int, ...]) -> Crop:
    """The whole frame."""
    return Crop(None, dims, (False,) * len(dims))


def crop_of(spatial: tuple[Any, ...], dims: tuple[int, ...]) -> Crop:
    """The :class:`Crop` of basic spatial indices (ints and slices) on frames of ``dims``."""
    if all(isinstance(k, slice) and k == slice(None) for k in spatial):
        return full_crop(dims)
    ranges, drop, sel = [], [], []
    for ax, (k, d) in enumerate(zip(spatial, dims, strict=True), start=1):
        if isinstance(k, int):
            if not -d <= k < d:
                raise FrameIndexError(f"index {k} is out of bounds for axis {ax} with size {d}")
            ranges.append(np.array([k % d]))
            drop.append(True)
            sel.append(slice(k % d, k % d + 1))
        else:
            ranges.append(np.arange(d)[k])
            drop.append(False)
            sel.append(k)
    grids = np.meshgrid(*ranges, indexing="ij")
    pix = np.ravel_multi_index(tuple(g.ravel() for g in grids), dims)
    return Crop(pix.astype(np.int64), tuple(len(r) for r in ranges), tuple(drop), tuple(sel))


def normalize_key(key: Any, shape: tuple[int, ...]) -> tuple[Any, tuple[Any, ...]]:
    """Split an index into a time part and per-axis spatial parts (ints made Python ints)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise FrameIndexError(
            "np.newaxis / None is not supported in a movie index; index first, then add axes "
            "to the NumPy result."
        )
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise FrameIndexError("an index can only have a single ellipsis ('...')")
    ndim = len(shape)
    if n_ell:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise FrameIndexError(
            f"too many indices for movie: movie is {ndim}-dimensional, but {len(key)} were indexed"
        )
    key = key + (slice(None),) * (ndim - len(key))
    norm = []
    for k in key:
        if isinstance(k, bool | np.bool_):
            raise FrameIndexError("a boolean scalar is not a valid movie index")
        norm.append(int(k) if isinstance(k, int | np.integer) else k)
    return norm[0], tuple(norm[1:])


def time_positions(tkey: Any, T: int) -> tuple[np.ndarray, Any]:
    """Frames to compute (sorted, unique) and how to pick the result from them."""
    if isinstance(tkey, int):
        if not -T <= tkey < T:
            raise FrameIndexError(f"index {tkey} is out of bounds for axis 0 with size {T}")
        return np.array([tkey % T], dtype=np.int64), 0
    if isinstance(tkey, slice):
        return np.arange(T, dtype=np.int64)[tkey], slice(None)
    arr = (
        np.asarray(tkey, dtype=np.int64)
        if isinstance(tkey, list) and not tkey
        else np.asarray(tkey)
    )
    if arr.dtype == bool:
        if arr.shape != (T,):
            raise FrameIndexError(
                f"boolean index did not match indexed array along axis 0; size of axis is {T} "
                f"but size of corresponding boolean axis is {arr.shape[0] if arr.ndim else 0}"
            )
        return np.flatnonzero(arr).astype(np.int64), slice(None)
    if arr.dtype.kind not in "iu":
        raise FrameIndexError(
            "only integers, slices (`:`), ellipsis (`...`), and integer or boolean arrays are "
            f"valid indices (got dtype {arr.dtype})"
        )
    arr = arr.astype(np.int64)
    bad = arr[(arr < -T) | (arr >= T)]
    if bad.size:
        raise FrameIndexError(f"index {int(bad[0])} is out of bounds for axis 0 with size {T}")
    arr = np.where(arr < 0, arr + T, arr)
    uniq, inv = np.unique(arr, return_inverse=True)
    return uniq, inv.reshape(arr.shape)


def time_key(times: np.ndarray) -> Any:
    """A slice for consecutive frames (zero-copy on memmaps), else the index array.

    ``times`` is sorted and unique, so it is consecutive iff its span equals its length.
    """
    if len(times) and int(times[-1]) - int(times[0]) == len(times) - 1:
        return slice(int(times[0]), int(times[-1]) + 1)
    return times


@dataclass(frozen=True)
class Window:
    """A validated window of frames: ``times`` (sorted as given, non-empty) and, when they
    are consecutive, ``span = (start, stop)``."""

    times: np.ndarray
    span: tuple[int, int] | None
    whole: bool

    @property
    def key(self) -> Any:
        """A hashable identity of the window."""
        if self.whole:
            return ("all",)
        if self.span is not None:
            return ("span", *self.span)
        return ("idx", self.times.tobytes())

    @property
    def index(self) -> slice | np.ndarray:
        """The index that applies the window along time."""
        if self.span is not None:
            return slice(*self.span)
        return self.times


def frame_window(frames: Any, T: int, *, name: str = "frames") -> Window:
    """Validate a window of frames: ``None`` (all), a slice, int indices (negative from the
    end) or a boolean mask of length ``T``.

    Raises
    ------
    OptionError
        Out-of-range bounds or indices, a mask of the wrong length, another kind of value, or
        a window with no frames (the message names ``name``, the value and ``T``).
    """
    if frames is None:
        return Window(np.arange(T, dtype=np.int64), (0, T), True)
    if isinstance(frames, slice):
        for part, v in (("start", frames.start), ("stop", frames.stop)):
            if v is not None and not -T <= v <= T:
                raise OptionError(
                    f"{name}={frames} is out of range: {part}={v} but the movie has T={T} "
                    f"frames (valid: -{T}..{T})"
                )
        sel = np.arange(T, dtype=np.int64)[frames]
    else:
        arr = np.asarray(frames)
        if arr.dtype == bool:
            if arr.shape != (T,):
                raise OptionError(
                    f"a boolean {name} mask must have shape ({T},) (T frames), got {arr.shape}"
                )
            sel = np.flatnonzero(arr).astype(np.int64)
        elif arr.dtype.kind in "iu" and arr.ndim <= 1:
            sel = arr.astype(np.int64).reshape(-1)
            if sel.size and (sel.min() < -T or sel.max() >= T):
                raise OptionError(f"{name}={frames!r} holds indices outside 0..{T - 1} (T={T})")
            sel = np.where(sel < 0, sel + T, sel)
        else:
            raise OptionError(
                f"{name} must be None, a slice, int indices or a boolean mask; got {frames!r}"
            )
    if sel.size == 0:
        raise OptionError(
            f"{name}={frames!r} selects no frames of the T={T}; it needs at least one"
        )
    step_one = sel.size == 1 or bool(np.all(np.diff(sel) == 1))
    span = (int(sel[0]), int(sel[-1]) + 1) if step_one else None
    return Window(sel, span, span == (0, T))
