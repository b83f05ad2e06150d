"""minian's results: the zarr stores ``save_minian`` writes, one ``<name>.zarr`` per variable.

Each store is an xarray dataset in zarr (format 2): the array ``<name>/<name>`` with its
dimension names in the ``_ARRAY_DIMENSIONS`` attribute, and the coordinate arrays beside it
(``unit_id``, ``frame``, ``height``, ``width``). Read here with zarr alone (no xarray):
``A (unit_id, height, width)`` dense becomes sparse CSC-like chunks of ``unit_id`` blocks in
CaImAn's Fortran pixel order, traces ``(unit_id, frame)`` are lazy dask arrays.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import sparse
import zarr
from dask.base import tokenize

from ..errors import FileFormatError, MissingFileError
from ._backends import Backend, from_backend
from ._chunks import file_identity

__all__ = ["MinianFootprints", "read_minian"]


def _open(folder: Path, name: str, *, required: bool) -> Any:
    store = folder / f"{name}.zarr"
    if not store.exists():
        if required:
            have = sorted(p.name for p in folder.glob("*.zarr"))
            raise MissingFileError(
                f"minian folder {str(folder)!r} has no {name}.zarr (minian's save_minian writes "
                f"one <name>.zarr per variable; found {have}). Pass the folder save_minian "
                "wrote to (the pipeline's 'minian_ds_path')."
            )
        return None
    try:
        arr = zarr.open_array(store=str(store / name), mode="r")
    except (FileNotFoundError, KeyError, ValueError, TypeError) as e:
        raise FileFormatError(
            f"{store.name} in {str(folder)!r} is not a store written by minian's save_minian "
            f"(no zarr array {name!r} inside: {type(e).__name__}: {e})"
        ) from e
    return arr


def _dims_of(arr: Any) -> tuple[str, ...]:
    return tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ()))


def _coord(folder: Path, name: str, coord: str) -> np.ndarray | None:
    store = folder / f"{name}.zarr" / coord
    if not store.exists():
        return None
    return np.asarray(zarr.open_array(store=str(store), mode="r")[...])


def _identity(folder: Path, name: str) -> str:
    """Cheap identity of a store's array (its metadata file's path, size and mtime: a new
    ``save_minian`` rewrites it) for deterministic graph names."""
    meta = folder / f"{name}.zarr" / name / ".zarray"
    if not meta.exists():
        meta = folder / f"{name}.zarr" / name / "zarr.json"
    return tokenize(file_identity(meta) if meta.exists() else str(folder / name))


def _expect(arr: Any, name: str, dims: tuple[str, ...], folder: Path) -> None:
    got = _dims_of(arr)
    if got != dims:
        raise FileFormatError(
            f"{name}.zarr in {str(folder)!r} has dimensions {got or 'unnamed'} with shape "
            f"{tuple(arr.shape)}; minian writes {name} as {dims}. Was it saved by save_minian?"
        )


class MinianFootprints(Backend):
    """minian's dense ``A (unit_id, height, width)`` read as sparse ``(P, K)`` column blocks,
    rows in CaImAn's Fortran order (``p = i + height*j``), columns in ``order``."""

    def __init__(self, path: Path, order: np.ndarray, dtype: Any):
        self.path = Path(path)
        arr = zarr.open_array(store=str(self.path), mode="r")
        self.K = int(order.size)
        self.dims = tuple(int(s) for s in arr.shape[1:])
        self.order = np.asarray(order, np.int64)
        self.shape = (math.prod(self.dims), self.K)
        self.dtype = np.dtype(dtype)
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> Any:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        k0, k1, step = cols.indices(self.K)
        idx = self.order[k0:k1:step]
        arr = zarr.open_array(store=str(self.path), mode="r")
        lo, hi = (int(idx.min()), int(idx.max()) + 1) if idx.size else (0, 0)
        block = np.asarray(arr[lo:hi])[idx - lo] if idx.size else np.zeros((0, *self.dims))
        # (k, h, w) → (P, k) with p = i + h*j: the transpose of each frame, raveled in C order
        flat = block.transpose(0, *range(block.ndim - 1, 0, -1)).reshape(block.shape[0], -1)
        coo = sparse.COO.from_numpy(np.ascontiguousarray(flat.T).astype(self.dtype, copy=False))
        return coo[rows] if rows != slice(None) else coo


def read_minian(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a minian result folder lazily.

    Returns
    -------
    dict
        ``A`` (dask ``(P, K)`` with pydata-sparse chunks, Fortran pixel order), ``dims``
        ``(height, width)``, ``C``, ``S``, ``b0``, ``c0`` (dask ``(K, T)`` or ``None``), ``b``
        ``(P, 1)`` and ``f`` ``(1, T)`` (dask or ``None``), ``unit_id`` (``(K,)``),
        ``files`` (the stores by name).

    Raises
    ------
    MissingFileError
        The folder, ``A.zarr`` or ``C.zarr`` is missing.
    FileFormatError
        A store is not minian's, dimensions or unit ids disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(
            f"minian folder {str(folder)!r} does not exist or is not a folder; pass the folder "
            "minian's save_minian wrote (with A.zarr, C.zarr...)."
        )
    A = _open(folder, "A", required=True)
    _expect(A, "A", ("unit_id", "height", "width"), folder)
    C = _open(folder, "C", required=True)
    _expect(C, "C", ("unit_id", "frame"), folder)
    uid_a = _coord(folder, "A", "unit_id")
    uid_c = _coord(folder, "C", "unit_id")
    K = int(A.shape[0])
    if uid_a is None or uid_c is None:
        uid_a = uid_c = np.arange(K)
    if C.shape[0] != K or not np.array_equal(np.sort(uid_a), np.sort(uid_c)):
        raise FileFormatError(
            f"A.zarr and C.zarr in {str(folder)!r} hold different units (A: {K} units, C: "
            f"{C.shape[0]}); save A and C of the same minian step (after the last "
            "update_temporal, subset A to C's unit_id)."
        )
    pos_a = {int(u): i for i, u in enumerate(uid_a)}
    order = np.array([pos_a[int(u)] for u in uid_c], np.int64)  # A's columns in C's unit order
    dims = tuple(int(s) for s in A.shape[1:])
    files = {"A": folder / "A.zarr", "C": folder / "C.zarr"}
    backend = MinianFootprints(folder / "A.zarr" / "A", order, A.dtype)
    kc = max(1, min(K, int(A.chunks[0]) if A.chunks else K))
    meta = sparse.COO.from_numpy(np.zeros((0, 0), dtype=A.dtype))
    chunks_k = tuple(min(kc, K - k) for k in range(0, K, kc)) or (0,)
    out: dict[str, Any] = {
        "A": from_backend(
            backend,
            ((backend.shape[0],), chunks_k),
            f"minian-A-{tokenize(_identity(folder, 'A'), order)}",
            meta=meta,
        ),
        "dims": dims,
        "unit_id": np.asarray(uid_c),
    }
    T = int(C.shape[1])
    for name in ("C", "S", "b0", "c0"):
        arr = C if name == "C" else _open(folder, name, required=False)
        if arr is None:
            out[name] = None
            continue
        _expect(arr, name, ("unit_id", "frame"), folder)
        uid = _coord(folder, name, "unit_id")
        if tuple(arr.shape) != (K, T) or (uid is not None and not np.array_equal(uid, uid_c)):
            raise FileFormatError(
                f"{name}.zarr in {str(folder)!r} has shape {tuple(arr.shape)} (units "
                f"{None if uid is None else uid.tolist()[:8]}) but C.zarr is ({K}, {T}) with "
                f"units {uid_c.tolist()[:8]}; the stores come from different minian steps"
            )
        out[name] = da.from_zarr(arr, name=f"minian-{name}-{_identity(folder, name)}")
        files[name] = folder / f"{name}.zarr"
    b = _open(folder, "b", required=False)
    f = _open(folder, "f", required=False)
    out["b"] = out["f"] = None
    if (b is None) != (f is None):
        raise FileFormatError(
            f"minian folder {str(folder)!r} has {'b' if b is not None else 'f'}.zarr but not "
            f"{'f' if b is not None else 'b'}.zarr; the background b·f needs both"
        )
    if b is not None and f is not None:
        _expect(b, "b", ("height", "width"), folder)
        _expect(f, "f", ("frame",), folder)
        if tuple(b.shape) != dims or tuple(f.shape) != (T,):
            raise FileFormatError(
                f"b.zarr {tuple(b.shape)} / f.zarr {tuple(f.shape)} in {str(folder)!r} do not "
                f"fit A's frames {dims} and C's {T} frames"
            )
        b_arr = da.from_zarr(b, name=f"minian-b-{_identity(folder, 'b')}")
        out["b"] = b_arr.T.reshape((-1, 1))  # Fortran order: (w, h) raveled in C
        out["f"] = da.from_zarr(f, name=f"minian-f-{_identity(folder, 'f')}")[None, :]
        files["b"], files["f"] = folder / "b.zarr", folder / "f.zarr"
    out["files"] = files
    return out
