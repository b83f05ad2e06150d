"""CaImAn's ``cnmf.save()`` HDF5 files, read lazily: factors as dask arrays, small arrays eagerly.

Sparse factors (``A``, ``W``) are CSC groups (``data``/``indices``/``indptr``/``shape``) read
column range by column range into pydata ``sparse.COO`` chunks; ``None`` is CaImAn's scalar
string dataset ``'NoneType'``.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse
import sparse
from dask.base import tokenize

from ..errors import FileFormatError, MissingFileError
from ._backends import Backend, from_backend
from ._chunks import CHUNK_BYTES, check_frame_chunk, file_identity, time_chunks
from ._hdf5 import H5Backend, open_h5
from ._sparse import check_csc

__all__ = ["CSCColumnsBackend", "memmap_candidates", "read_cnmf_hdf5"]


class CSCColumnsBackend(Backend):
    """A CaImAn sparse matrix group (CSC ``data``/``indices``/``indptr``/``shape``) in HDF5.

    Reading columns ``k0:k1`` reads only ``indptr[k0:k1+1]`` and the matching slices of
    ``data``/``indices``; chunks are pydata ``sparse.COO`` arrays.
    """

    def __init__(self, path: Path, group: str, shape: tuple[int, int], dtype: Any):
        self.path = Path(path)
        self.group = group
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self._lock = threading.Lock()
        self.record()

    def _grp(self) -> Any:
        h = self.__dict__.get("_h_grp")
        if h is None:
            self._h_file = h5py.File(self.path, "r")
            h = self._h_grp = self._h_file[self.group]
        return h

    def columns(self, k0: int, k1: int) -> scipy.sparse.csc_matrix:
        """Columns ``k0:k1`` as a scipy CSC matrix."""
        self.check()
        with self._lock:
            g = self._grp()
            indptr = np.asarray(g["indptr"][k0 : k1 + 1], dtype=np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            data = np.asarray(g["data"][lo:hi])
            indices = np.asarray(g["indices"][lo:hi])
        return scipy.sparse.csc_matrix((data, indices, indptr - lo), shape=(self.shape[0], k1 - k0))

    def __getitem__(self, key: Any) -> Any:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        k0, k1, step = cols.indices(self.shape[1])
        m = self.columns(k0, k1)
        if step != 1:
            m = m[:, ::step]
        return sparse.COO.from_scipy_sparse(m[rows])


def _is_none(obj: Any) -> bool:
    """True for CaImAn's encoding of ``None``: a scalar string dataset ``'NoneType'``."""
    if not isinstance(obj, h5py.Dataset) or obj.shape != ():
        return False
    if obj.dtype.kind not in ("O", "S", "U"):
        return False
    v = obj[()]
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return bool(v == "NoneType")


def _check_storage(ds: Any, file_size: int, path: Path) -> None:
    """Refuse datasets whose contiguous storage lies past the end of a truncated file."""
    try:
        offset = ds.id.get_offset()
    except (TypeError, ValueError, KeyError):
        offset = None  # chunked/compact layouts have no single offset
    if offset is None:
        return
    end = int(offset) + int(ds.id.get_storage_size())
    if end > file_size:
        raise FileFormatError(
            f"{path.name}: dataset {ds.name} lies at bytes {offset:,}-{end:,} but the file has "
            f"only {file_size:,} bytes; the file is truncated. Copy it again or re-save it."
        )


def _as_indices(value: Any, where: str) -> np.ndarray:
    """Component indices from a file: whole numbers (CaImAn sometimes stores floats)."""
    arr = np.asarray(_parse_small(value)).ravel()
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise FileFormatError(
        f"{where} holds {arr[:5].tolist()}...: component indices must be whole numbers. The file "
        "is damaged; save the result again, or pass the model's arrays to cd.from_arrays."
    )


def _parse_small(value: Any) -> Any:
    """Numbers from CaImAn's fallback encodings (``|S32`` byte strings, object arrays)."""
    arr = np.asarray(value)
    if arr.dtype.kind in ("S", "O", "U"):
        out = np.empty(arr.shape, dtype=np.float64)
        for i, v in np.ndenumerate(arr):
            s = v.decode() if isinstance(v, bytes) else v
            try:
                out[i] = float(s) if s is not None and s != "None" else np.nan
            except (TypeError, ValueError):
                return arr
        return out
    return arr


_FRAME_KEYS = ("C", "f", "YrA", "S", "F_dff", "R")
_EXTRA_KEYS = (
    "bl",
    "c1",
    "g",
    "lam",
    "neurons_sn",
    "sn",
    "SNR_comp",
    "r_values",
    "Cn",
    "cnn_preds",
)


def read_cnmf_hdf5(
    path: str | os.PathLike[str], *, frame_chunk: int | None = None, component_chunk: int = 4096
) -> dict[str, Any]:
    """Read a CaImAn ``cnmf.save()`` HDF5 file lazily.

    Returns a dict with dask arrays ``A`` (P x K, pydata-sparse chunks, Fortran pixel order),
    ``C``, ``b``, ``f``, ``W``, ``b0``, ``YrA``, ``S``, ``F_dff`` (``None`` where CaImAn stored
    ``'NoneType'``), NumPy ``idx_components`` / ``idx_components_bad`` (``None`` if never
    evaluated), ``dims``, ``fr``, ``mmap_file`` (the path CaImAn recorded), ``extras`` (small
    per-component arrays, byte strings parsed as floats) and ``params`` (scalars by group).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FileFormatError
        Truncated or not HDF5, or not a CaImAn CNMF file (no ``/estimates/A`` or ``/estimates/C``).
    """
    path = Path(path)
    frame_chunk = check_frame_chunk(frame_chunk)
    if not path.exists():
        raise MissingFileError(f"CNMF file {str(path)!r} does not exist")
    ident = file_identity(path)
    file_size = ident[1]
    out: dict[str, Any] = {"path": path}
    with open_h5(path) as f:
        est = f.get("estimates")
        if not isinstance(est, h5py.Group) or "A" not in est or "C" not in est:
            top = sorted(f.keys())
            raise FileFormatError(
                f"{path.name} is HDF5 but not a CaImAn cnmf.save() file: it has no "
                f"/estimates/A and /estimates/C (top-level keys: {top}). Open the movie with "
                "cd.open_movie or build a model with cd.from_arrays."
            )
        dims = _read_dims(f, path)
        out["dims"] = dims
        for name in ("A", "W"):
            out[name] = None
            node = est.get(name)
            if node is None or _is_none(node):
                continue
            if not isinstance(node, h5py.Group) or not {
                "data",
                "indices",
                "indptr",
                "shape",
            } <= set(node.keys()):
                raise FileFormatError(
                    f"{path.name}: /estimates/{name} is not a CSC group with data/indices/"
                    "indptr/shape as cnmf.save() writes it"
                )
            for part in ("data", "indices", "indptr"):
                _check_storage(node[part], file_size, path)
            stored = tuple(int(x) for x in np.asarray(node["shape"][()]).ravel())
            if len(stored) != 2:
                raise FileFormatError(
                    f"{path.name}: /estimates/{name}/shape is {stored}; a CSC matrix has a "
                    "shape of 2 entries (pixels, components)"
                )
            shape = (stored[0], stored[1])
            check_csc(
                node["data"].shape,
                node["indices"],
                node["indptr"],
                shape,
                f"{path.name}: /estimates/{name}",
            )
            columns = CSCColumnsBackend(path, f"estimates/{name}", shape, node["data"].dtype)
            kc = max(1, min(component_chunk, shape[1])) if name == "A" else max(1, shape[1])
            meta = sparse.COO.from_numpy(np.zeros((0, 0), dtype=columns.dtype))
            out[name] = from_backend(
                columns,
                ((shape[0],), time_chunks(shape[1], kc) or (0,)),
                f"caiman-h5-{name}-{tokenize(ident)}",
                meta=meta,
            )
        for name in (*_FRAME_KEYS, "b", "b0"):
            node = est.get(name)
            if node is None or _is_none(node) or not isinstance(node, h5py.Dataset):
                out[name] = None
                continue
            _check_storage(node, file_size, path)
            if node.dtype.kind not in "fiu":
                out[name] = None
                continue
            dataset = H5Backend(path, f"estimates/{name}")
            shp = dataset.shape
            if name in _FRAME_KEYS and len(shp) == 2:
                tc = frame_chunk or max(1, CHUNK_BYTES // max(1, shp[0] * 8))
                chunks: Any = ((shp[0],), time_chunks(shp[1], tc) or (0,))
            else:
                chunks = tuple((s,) if s else (0,) for s in shp)
            out[name] = from_backend(dataset, chunks, f"caiman-h5-{name}-{tokenize(ident)}")
        for name in ("idx_components", "idx_components_bad"):
            node = est.get(name)
            if node is None or _is_none(node):
                out[name] = None
            else:
                out[name] = _as_indices(node[()], f"{path.name}: /estimates/{name}")
        extras: dict[str, Any] = {}
        for name in _EXTRA_KEYS:
            node = est.get(name)
            if isinstance(node, h5py.Dataset) and not _is_none(node):
                extras[name] = _parse_small(node[()])
        out["extras"] = extras
        fr = f.get("params/data/fr")
        out["fr"] = None
        if isinstance(fr, h5py.Dataset) and not _is_none(fr):
            v = np.asarray(_parse_small(fr[()]))
            fr_v = float(v.ravel()[0]) if v.size == 1 and v.dtype.kind in "fiu" else math.nan
            if not (math.isfinite(fr_v) and fr_v > 0):
                raise FileFormatError(
                    f"{path.name}: /params/data/fr is {fr[()]!r}; a frame rate must be a positive "
                    "number of Hz. The file is damaged; save the result again with the right fr."
                )
            out["fr"] = fr_v
        mm = f.attrs.get("mmap_file")
        out["mmap_file"] = mm.decode() if isinstance(mm, bytes) else mm
        ssub = f.get("params/init/ssub_B")
        out["ssub_B"] = (
            int(ssub[()]) if isinstance(ssub, h5py.Dataset) and not _is_none(ssub) else None
        )
    return out


def _read_dims(f: Any, path: Path) -> tuple[int, ...]:
    for key in ("estimates/dims", "dims", "params/data/dims"):
        node = f.get(key)
        if node is not None and not _is_none(node):
            raw = np.asarray(_parse_small(node[()])).ravel()
            if raw.dtype.kind not in "fiu" or not np.all(raw == np.round(raw)):
                raise FileFormatError(
                    f"{path.name}: /{key} is {raw.tolist()}; frame dims must be whole numbers. "
                    "Pass dims=(d1, d2[, d3]) to cd.open_cnmf."
                )
            dims = tuple(int(x) for x in raw)
            if len(dims) in (2, 3) and min(dims) > 0:
                return dims[:2] if len(dims) == 3 and dims[2] == 1 else dims
    raise FileFormatError(
        f"{path.name}: no frame dims in /estimates/dims, /dims or /params/data/dims; pass "
        "dims=(d1, d2[, d3]) to cd.open_cnmf."
    )


def memmap_candidates(cnmf_path: Path, recorded: str | None) -> list[Path]:
    """Where the movie CaImAn fitted may be: the recorded path, or its name beside the file."""
    out: list[Path] = []
    if recorded:
        rec = Path(recorded)
        out.append(rec)
        out.append(cnmf_path.parent / rec.name)
    return out
