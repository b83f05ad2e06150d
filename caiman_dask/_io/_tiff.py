"""TIFF movies, read page range by page range with tifffile."""

from __future__ import annotations

import math
import os
import struct
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
        try:
            with tifffile.TiffFile(self.path) as tif:
                if not tif.series or not len(tif.series[series].pages):
                    raise FileFormatError(
                        f"TIFF {str(self.path)!r} holds no images (no pages); it is empty or "
                        "truncated (cut short while being written). Write it again."
                    )
                s = tif.series[series]
                shape = tuple(int(x) for x in s.shape)
                self.dtype = np.dtype(s.dtype)
                npages = len(s.pages)
                _check_pages(self.path, s, shape, npages)
        except FileFormatError:
            raise
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, struct.error) as e:
            raise FileFormatError(
                f"cannot read {str(self.path)!r} as a TIFF movie ({type(e).__name__}: {e}); the "
                "file is empty, truncated or not a TIFF. Write it again, or pass the movie as "
                "an array."
            ) from e
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
        self.record()

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
        self.check()
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


def _check_pages(path: Path, s: Any, shape: tuple[int, ...], npages: int) -> None:
    """Refuse a TIFF cut short: fewer pages than its series needs, or page data past its end
    (tifffile would read such frames as garbage)."""
    page_px = math.prod(s.pages[0].shape) if npages else 0
    if npages * page_px != math.prod(shape):
        raise FileFormatError(
            f"TIFF {str(path)!r}: tifffile finds {npages} readable page(s) of the "
            f"{math.prod(shape) // max(1, page_px)} its series {shape} needs; the file is "
            "truncated (cut short while being written). Write it again."
        )
    size = os.path.getsize(path)
    for n, page in enumerate(s.pages):
        ends = [
            int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)
        ]
        if ends and max(ends) > size:
            raise FileFormatError(
                f"TIFF {str(path)!r}: the data of page {n} ends at byte {max(ends):,} but the "
                f"file has {size:,} bytes; the file is truncated. Write it again."
            )


def open_tiff(path: Path, frame_chunk: int | None) -> MovieSource:
    """A TIFF movie (its first series) as a movie source."""
    backend = TiffBackend(path)
    T, *dims = backend.shape
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"caiman-tiff-{tokenize(file_identity(path), frames)}"
    data = from_backend(backend, (time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(data, backend, f"TIFF {path}", (path,))
