"""TIFF movies, read page range by page range with tifffile."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from dask.base import tokenize

from ..errors import FileFormatError
from ._backends import Backend, from_backend
from ._chunks import default_frame_chunk, file_identity, time_chunks
from ._source import MovieSource

__all__ = ["TiffBackend", "open_tiff"]


class TiffBackend(Backend):
    """A TIFF movie, read page range by page range with tifffile.

    2D movies are ``(T, d1, d2)`` (one page per frame); volumetric movies are stored by tifffile
    as ``(T, d1, d2, d3)`` with ``d1`` pages of ``(d2, d3)`` per time point.
    """

    def __init__(self, path: Path, series: int = 0):
        self.path = Path(path)
        self.series = series
        with tifffile.TiffFile(self.path) as tif:
            s = tif.series[series]
            shape = tuple(int(x) for x in s.shape)
            self.dtype = np.dtype(s.dtype)
            npages = len(s.pages)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) not in (3, 4):
            raise FileFormatError(
                f"TIFF {self.path} has series shape {shape}; expected (T, d1, d2) or "
                "(T, d1, d2, d3). Pass the movie as an array if its axes are different."
            )
        self.shape = shape
        self.pages_per_frame = npages // shape[0]
        self._lock = threading.Lock()

    def _file(self) -> Any:
        h = self.__dict__.get("_h_file")
        if h is None:
            h = tifffile.TiffFile(self.path)
            self._h_file = h
        return h

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        tkey, rest = key[0], key[1:]
        times = np.arange(self.shape[0])[tkey]
        scalar = times.ndim == 0
        times = np.atleast_1d(times)
        ppf = self.pages_per_frame
        out = np.empty((len(times), *self.shape[1:]), self.dtype)
        with self._lock:
            pages = self._file().series[self.series].pages
            for n, t in enumerate(times):
                if ppf == 1:
                    out[n] = pages[int(t)].asarray()
                else:
                    for z in range(ppf):
                        out[n, z] = pages[int(t) * ppf + z].asarray()
        res = out[0] if scalar else out
        return res[(slice(None),) * (0 if scalar else 1) + rest] if rest else res


def open_tiff(path: Path, frame_chunk: int | None) -> MovieSource:
    """A TIFF movie (its first series) as a movie source."""
    backend = TiffBackend(path)
    T, *dims = backend.shape
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"caiman-tiff-{tokenize(file_identity(path), frames)}"
    data = from_backend(backend, (time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(data, backend, f"TIFF {path}", (path,))
