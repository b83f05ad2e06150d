"""Movies already in memory or in a NumPy file: NumPy arrays and memmaps, dask arrays."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._backends import Backend, from_backend
from ._chunks import default_frame_chunk, file_identity, time_chunks
from ._source import MovieSource

__all__ = ["NumpyMemmapBackend", "open_array"]


class _ViewReader:
    """Dask-free reader over a memmap backend's kept-open view (checked before each read)."""

    def __init__(self, backend: NumpyMemmapBackend):
        self.backend = backend

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.backend.view()[key]


class NumpyMemmapBackend(Backend):
    """A contiguous ``np.memmap`` (any layout) reopened from its file on each read."""

    def __init__(self, arr: np.memmap, path: Path):
        self.path = Path(path)
        self.offset = int(arr.offset)
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.order: Literal["C", "F"] = "C" if arr.flags.c_contiguous else "F"
        self._lock = threading.Lock()
        self.record()

    def view(self) -> np.ndarray:
        """The whole array as a read-only view of the file, kept open for the fast path;
        checks first that the file has not changed since it was opened."""
        return self._kept_view(
            lambda: np.memmap(
                self.path, self.dtype, "r", offset=self.offset, shape=self.shape, order=self.order
            )
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        self.check()
        view = np.memmap(
            self.path, self.dtype, "r", offset=self.offset, shape=self.shape, order=self.order
        )
        try:
            return np.array(view[key], order="K")
        finally:
            del view


def open_array(arr: Any, frame_chunk: int | None) -> MovieSource:
    """A dask array, a NumPy memmap or any array-like ``(T, *dims)`` as a movie source."""
    if isinstance(arr, da.Array):
        data = arr
        if any(len(c) > 1 for c in data.chunks[1:]):
            data = data.rechunk({i: -1 for i in range(1, data.ndim)})
        if frame_chunk:
            data = data.rechunk({0: frame_chunk})
        return MovieSource(data, None, f"dask array {data.name}")
    if (
        isinstance(arr, np.memmap)
        and arr.filename
        and (arr.flags.c_contiguous or arr.flags.f_contiguous)
    ):
        # read per chunk through the file (a np.memmap would pickle as its whole data)
        path = Path(arr.filename)
        backend = NumpyMemmapBackend(arr, path)
        dims = arr.shape[1:]
        frames = frame_chunk or default_frame_chunk(dims)
        name = f"numpy-memmap-{tokenize(file_identity(path), arr.offset, arr.shape, arr.dtype.str)}"
        data = from_backend(
            backend, (time_chunks(arr.shape[0], frames), *[(d,) for d in dims]), name
        )
        return MovieSource(data, _ViewReader(backend), f"NumPy memmap {path}", (path,))
    if isinstance(arr, np.memmap):
        desc = f"NumPy memmap {arr.filename}"
        files: tuple[Path, ...] = (Path(arr.filename),) if arr.filename else ()
    else:
        desc = "NumPy array"
        files = ()
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    dims = arr.shape[1:]
    frames = frame_chunk or default_frame_chunk(dims)
    data = da.from_array(arr, chunks=(time_chunks(arr.shape[0], frames), *[(d,) for d in dims]))
    return MovieSource(data, arr, desc, files)
