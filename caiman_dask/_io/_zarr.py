"""Zarr movies: one array of a zarr store, read with its own chunks."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import zarr

from ..errors import OptionError
from ._source import MovieSource

__all__ = ["open_zarr_movie"]


def open_zarr_movie(path: Path, key: str | None, frame_chunk: int | None) -> MovieSource:
    """Array ``key`` of the zarr store at ``path`` (the root when ``key`` is ``None``)."""
    node = zarr.open(str(path), mode="r", path=key or "")
    if not isinstance(node, zarr.Array):
        raise OptionError(f"zarr store {path} at {key!r} is a group; pass key='<array path>'.")
    data = da.from_zarr(node, chunks=None)
    if frame_chunk:
        data = data.rechunk({0: frame_chunk})
    return MovieSource(data, node, f"zarr {path}:{key or ''}", (path,))
