"""``open_movie``: one entry point that picks the reader from the path's suffix or the type."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import FileFormatError, MissingFileError, OptionError
from ._arrays import open_array
from ._chunks import check_frame_chunk
from ._hdf5 import open_h5_movie
from ._memmap import open_memmap
from ._source import MovieSource
from ._tiff import open_tiff
from ._zarr import open_zarr_movie

__all__ = ["open_movie"]


def open_movie(
    source: Any,
    *,
    key: str | None = None,
    frame_chunk: int | None = None,
) -> MovieSource:
    """Open a movie ``(T, *dims)`` lazily from a file or an array.

    Parameters
    ----------
    source
        A CaImAn memmap path (``*.mmap``; dims, order and T from the name), a TIFF, an HDF5 file
        (``key`` names the dataset; default ``'mov'`` or the only 3D/4D dataset), a zarr array
        or store (``key`` is the array path), a ``.npy`` file, a NumPy array / memmap or a dask
        array, all frames-first ``(T, *dims)``.
    key
        Dataset path inside an HDF5 or zarr container.
    frame_chunk
        Frames per dask chunk (default: about 64 MiB per chunk).

    Returns
    -------
    MovieSource

    Raises
    ------
    MissingFileError
        The file does not exist (a ``FileNotFoundError``).
    FileFormatError
        Unknown suffix, a memmap whose size disagrees with its name, an empty or truncated
        file, a missing dataset ``key``.
    OptionError
        ``frame_chunk`` is not a positive int.
    StoreError
        An interrupted caiman_dask export (its unwritten chunks would read as zeros).
    """
    frame_chunk = check_frame_chunk(frame_chunk)
    if key is not None and not isinstance(key, str):
        raise OptionError(f"key={key!r} must be a string: a dataset or array path in the file")
    if isinstance(source, MovieSource):
        return source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise MissingFileError(f"movie file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".mmap":
            return open_memmap(path, frame_chunk)
        if suffix in (".tif", ".tiff"):
            return open_tiff(path, frame_chunk)
        if suffix in (".h5", ".hdf5", ".hdf"):
            return open_h5_movie(path, key, frame_chunk)
        if suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists()):
            return open_zarr_movie(path, key, frame_chunk)
        if suffix == ".npy":
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError) as e:
                raise FileFormatError(
                    f"cannot read {str(path)!r} as a .npy array ({type(e).__name__}: {e}); the "
                    "file is truncated or not a NumPy file. Save it again with np.save."
                ) from e
            return open_array(arr, frame_chunk)
        raise FileFormatError(
            f"cannot tell the format of movie {str(path)!r} from its suffix {suffix!r}; "
            "supported: .mmap (CaImAn memmap), .tif/.tiff, .h5/.hdf5 (with key=), .zarr, .npy. "
            "Or pass an array."
        )
    if hasattr(source, "shape") and hasattr(source, "dtype"):
        if "zarr" in type(source).__module__:
            data = da.from_zarr(source)
            if frame_chunk:
                data = data.rechunk({0: frame_chunk})
            return MovieSource(data, source, f"zarr array {getattr(source, 'path', '')}")
        return open_array(source, frame_chunk)
    raise OptionError(
        f"movie must be a path or an array, got {type(source).__name__}; pass a CaImAn memmap, "
        "TIFF, HDF5, zarr or .npy path, or a NumPy / dask array of shape (T, *dims)."
    )
