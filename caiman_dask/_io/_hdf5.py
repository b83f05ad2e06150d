"""HDF5 movies: one dataset, opened read-only on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from dask.base import tokenize

from ..errors import FileFormatError, OptionError
from ._backends import Backend, from_backend
from ._chunks import default_frame_chunk, file_identity, time_chunks
from ._source import MovieSource

__all__ = ["H5Backend", "open_h5", "open_h5_movie"]


def open_h5(path: Path) -> h5py.File:
    """``path`` opened read-only, or a :class:`FileFormatError` saying why it cannot be."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise FileFormatError(
            f"cannot open {str(path)!r} as HDF5 ({e}); the file is truncated, still being "
            "written, or not an HDF5 file. Re-save it with CaImAn's cnmf.save()."
        ) from e


class H5Backend(Backend):
    """One HDF5 dataset, opened read-only on first use."""

    def __init__(self, path: Path, key: str):
        self.path = Path(path)
        self.key = key
        with open_h5(self.path) as f:
            ds = f.get(key)
            if not isinstance(ds, h5py.Dataset):
                raise FileFormatError(
                    f"HDF5 file {str(self.path)!r} has no dataset {key!r}"
                    + (" (it is a group)" if ds is not None else "")
                    + f"; its datasets are {_datasets(f)[:20]}. Pass key='<dataset>'."
                )
            self.shape = tuple(int(x) for x in ds.shape)
            self.dtype = np.dtype(ds.dtype)
        self._lock = threading.Lock()
        self.record()

    def _ds(self) -> Any:
        h = self.__dict__.get("_h_ds")
        if h is None:
            self._h_file = h5py.File(self.path, "r")
            h = self._h_ds = self._h_file[self.key]
        return h

    def __getitem__(self, key: Any) -> np.ndarray:
        self.check()
        with self._lock:
            try:
                return np.asarray(self._ds()[key])
            except OSError as e:  # (h5py's errors of damaged data are OSErrors)
                raise FileFormatError(
                    f"cannot read dataset {self.key!r} of {str(self.path)!r} ({e}); the file is "
                    "damaged. Copy or save it again."
                ) from e


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def open_h5_movie(path: Path, key: str | None, frame_chunk: int | None) -> MovieSource:
    """Dataset ``key`` of an HDF5 file (default ``'mov'``, or the only 3D/4D dataset)."""
    with open_h5(path) as f:
        if key is None:
            dsets = _datasets(f)
            movies = [n for n in dsets if len(f[n].shape) in (3, 4)]
            if "mov" in movies:
                key = "mov"
            elif len(movies) == 1:
                key = movies[0]
            else:
                raise OptionError(
                    f"HDF5 file {path} holds {len(movies)} candidate movie datasets {movies}; "
                    "pass key='<dataset>' to choose one."
                )
    backend = H5Backend(path, key)
    if len(backend.shape) not in (3, 4):
        raise FileFormatError(
            f"HDF5 dataset {key!r} of {str(path)!r} has shape {backend.shape}; a movie is "
            "(T, d1, d2) or (T, d1, d2, d3). Pass key= of the movie dataset."
        )
    T, *dims = backend.shape
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"caiman-h5-{tokenize(file_identity(path), key, frames)}"
    data = from_backend(backend, (time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(data, backend, f"HDF5 {path}:{key}", (path,))
