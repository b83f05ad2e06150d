"""The movie source every reader returns: a chunked dask array plus a dask-free frame reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._backends import Backend, from_backend

__all__ = ["MovieSource"]


@dataclass(frozen=True, eq=False)
class MovieSource:
    """A movie ``(T, *dims)``: a chunked dask array plus a dask-free reader for the fast path.

    Attributes
    ----------
    data
        The movie as a dask array, time-chunked, one spatial chunk.
    reader
        Anything numpy-indexable returning NumPy (a memmap view, an h5py-backed object, a NumPy
        array) or ``None`` when frames must go through dask (a user's dask array).
    description
        Human-readable provenance (file path, layout).
    files
        Files the movie reads (for provenance records).
    views
        For a CaImAn memmap, its backend: blocks are zero-copy views of the file, so the movie
        can be re-chunked for free (see :meth:`in_time_chunks`).
    """

    data: da.Array
    reader: Any
    description: str
    files: tuple[Path, ...] = ()
    views: Backend | None = None

    def in_time_chunks(self, chunks: tuple[int, ...]) -> da.Array | None:
        """The movie in other time chunks, read straight from the file, when that is free.

        Returns ``None`` unless blocks are zero-copy views of the file (CaImAn memmaps), where
        any chunking costs nothing; other sources would copy, so callers keep ``data``.
        """
        if self.views is None:
            return None
        if tuple(chunks) == tuple(self.data.chunks[0]):
            return self.data
        name = f"{self.data.name}-t{tokenize(tuple(chunks))}"
        return from_backend(self.views, (tuple(chunks), *[(d,) for d in self.dims]), name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.shape[1:]

    def read(self, key: Any) -> np.ndarray:
        """NumPy frames for ``key`` (a tuple of a time index and spatial indices)."""
        if self.reader is not None:
            return np.asarray(self.reader[key])
        return np.asarray(self.data[key].compute(scheduler="sync"))
