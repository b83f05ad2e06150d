"""Reading back what :func:`caiman_dask.to_zarr` wrote: the model, the store's attributes,
a listing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
import zarr

from ._io import check_csc
from ._model import CNMFModel, from_arrays
from ._store import root_attrs
from .errors import MissingFileError, StoreError

__all__ = ["describe_store", "open_zarr", "store_info"]


def describe_store(path: str | os.PathLike[str]) -> str:
    """A human-readable listing of a store: every group and array with shape, dtype, chunks."""
    path = Path(path)
    info = store_info(path)
    root = zarr.open_group(str(path), mode="r")
    lines = [
        f"{path}  (caiman_dask {info.get('version')}, "
        f"{'complete' if info.get('complete') else 'INCOMPLETE'}; dims={info.get('dims')}, "
        f"T={info.get('T')}, K={info.get('K')})"
    ]

    def walk(g: Any, prefix: str) -> None:
        for name in sorted(g.keys()):
            node = g[name]
            full = f"{prefix}{name}"
            if isinstance(node, zarr.Array):
                shards = getattr(node, "shards", None)
                extra = f" shards={shards}" if shards else ""
                lines.append(
                    f"  {full:<34} {node.shape!s:<20} {node.dtype!s:<8} chunks={node.chunks}{extra}"
                )
            else:
                kind = (
                    "OME-Zarr image"
                    if ("ome" in node.attrs or "multiscales" in node.attrs)
                    else "group"
                )
                lines.append(f"  {full + '/':<34} {kind}")
                walk(node, full + "/")

    walk(root, "")
    return "\n".join(lines)


def store_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``caiman_dask`` root attributes of a store (raises if it is not ours)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"store {str(path)!r} does not exist")
    attrs = root_attrs(path)
    if not attrs:
        raise StoreError(f"{path} is a zarr store but not one written by caiman_dask")
    return attrs


def open_zarr(
    path: str | os.PathLike[str], *, movie: Any = None, allow_incomplete: bool = False
) -> CNMFModel:
    """Open a store written by :func:`to_zarr` as a model.

    Dense factors (``C``, ``b``, ``f``, ...) are read lazily, per chunk, from the store; the
    sparse ``A`` and ``W`` (small) are loaded. The stored movies themselves open with
    ``cd.open_movie(path, key="rcm/0")``.

    Parameters
    ----------
    path
        The store.
    movie
        The movie ``Y`` (default: the source movie recorded in the store, if it still exists).
    allow_incomplete
        Open an interrupted export anyway (its movies have unwritten chunks).

    Raises
    ------
    StoreError
        Not a caiman_dask store, incomplete (re-run the same export to finish it), or without
        factors.
    """
    path = Path(path)
    info = store_info(path)
    if not info.get("complete") and not allow_incomplete:
        raise StoreError(
            f"{path} is an incomplete caiman_dask export (interrupted?): run the same "
            "to_zarr / caiman-dask export again to finish it, or pass allow_incomplete=True."
        )
    root = zarr.open_group(str(path), mode="r")
    fg = root.get("factors")
    if not isinstance(fg, zarr.Group):
        raise StoreError(f"{path} has no factors/ group (exported with factors=False)")

    def array(g: zarr.Group, name: str) -> zarr.Array:
        node = g[name]
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{path}: {g.path}/{name} is a group; an array was expected")
        return node

    def dense(name: str) -> Any:
        return da.from_zarr(array(fg, name)) if name in fg else None

    def csc(name: str) -> Any:
        g = fg.get(name)
        if g is None:
            return None
        shape = g.attrs.get("shape")
        if not isinstance(g, zarr.Group) or not isinstance(shape, list) or len(shape) != 2:
            raise StoreError(
                f"{path}: factors/{name} is not a CSC group with a 2-entry 'shape' attribute"
            )
        data, indices, indptr = array(g, "data"), array(g, "indices"), array(g, "indptr")
        shp = (int(shape[0]), int(shape[1]))
        check_csc(
            data.shape,
            indices,
            indptr,
            shp,
            f"{path}: factors/{name}",
            " The store is damaged; export it again.",
        )
        return scipy.sparse.csc_matrix((data[...], indices[...], indptr[...]), shape=shp)

    def small(name: str) -> np.ndarray | None:
        return np.asarray(array(fg, name)[...]) if name in fg else None

    if movie is None:
        for f in info.get("source_files", []):
            if f.get("role") == "movie" and Path(f["path"]).exists():
                movie = f["path"]
    dims = tuple(int(d) for d in np.asarray(array(fg, "dims")[...]))
    return from_arrays(
        csc("A"),
        dense("C"),
        dims=dims,
        b=dense("b"),
        f=dense("f"),
        W=csc("W"),
        b0=dense("b0"),
        YrA=dense("YrA"),
        S=dense("S"),
        F_dff=dense("F_dff"),
        Y=movie,
        fr=info.get("fr"),
        idx_components=small("idx_components"),
        idx_components_bad=small("idx_components_bad"),
    )
