"""Zarr movies: one array of a zarr store, read with its own chunks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from ..errors import FileFormatError, OptionError, StoreError
from ._source import MovieSource

__all__ = ["open_zarr_movie"]


def _export_attrs(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The ``caiman_dask`` root attributes of the export holding ``path``, if it is one."""
    for p in (path, *list(path.parents)[:3]):
        for meta, inner in (("zarr.json", True), (".zattrs", False)):
            f = p / meta
            if not f.is_file():
                continue
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            attrs = doc.get("attributes", {}) if inner else doc
            ours = attrs.get("caiman_dask") if isinstance(attrs, dict) else None
            if isinstance(ours, dict):
                return p, ours
    return None


def open_zarr_movie(path: Path, key: str | None, frame_chunk: int | None) -> MovieSource:
    """Array ``key`` of the zarr store at ``path`` (the root when ``key`` is ``None``).

    An export of caiman_dask that was interrupted (root attribute ``complete`` false) is
    refused, as :func:`caiman_dask.open_zarr` refuses it: its unwritten chunks would read as
    zeros.
    """
    export = _export_attrs(path)
    if export is not None and not export[1].get("complete", False):
        raise StoreError(
            f"{str(export[0])!r} is an incomplete caiman_dask export (interrupted?): its unwritten "
            "chunks would read as zeros. Run the same cd.to_zarr / caiman-dask export again to "
            "finish it."
        )
    try:
        node = zarr.open(str(path), mode="r", path=key or "")
    except (FileNotFoundError, KeyError) as e:
        raise FileFormatError(
            f"zarr store {str(path)!r} has no array at key={key!r}; pass the path of an array "
            "inside it, e.g. key='rcm/0' for a caiman_dask export."
        ) from e
    except (ValueError, OSError) as e:
        raise FileFormatError(
            f"cannot open {str(path)!r} as a zarr store ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(node, zarr.Array):
        raise OptionError(f"zarr store {path} at {key!r} is a group; pass key='<array path>'.")
    if node.ndim not in (3, 4):
        raise FileFormatError(
            f"zarr array {key!r} of {str(path)!r} has shape {node.shape}; a movie is "
            "(T, d1, d2) or (T, d1, d2, d3)."
        )
    data = da.from_zarr(node, chunks=None)
    if frame_chunk:
        data = data.rechunk({0: frame_chunk})
    return MovieSource(data, node, f"zarr {path}:{key or ''}", (path,))
