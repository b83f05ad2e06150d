"""NWB files (HDF5) with an optical-physiology segmentation, read with h5py.

What is read: a ``PlaneSegmentation`` (``pixel_mask``, ``voxel_mask`` or ``image_mask``; the
exact ``weight_float64`` column ``cd.to_nwb`` adds), its ``RoiResponseSeries`` (lazily, in
time chunks), a background ``PlaneSegmentation`` with its traces, ``cd.to_nwb``'s ring model,
and the ``TwoPhotonSeries`` movie (lazily, or its external file). Pixel axes follow the NWB
names: ``x`` is the first pixel axis of a frame (rows, ``d1``), as suite2p, roiextractors and
``cd.to_nwb`` write them. Footprints come back as CSC in CaImAn's Fortran pixel order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import scipy.sparse
from dask.base import tokenize

from ..errors import FileFormatError, MissingFileError
from ._backends import from_backend
from ._chunks import CHUNK_BYTES, default_frame_chunk, file_identity, time_chunks
from ._hdf5 import H5Backend, open_h5
from ._source import MovieSource

__all__ = ["open_nwb_movie", "read_nwb"]


def _type(obj: Any) -> str:
    v = obj.attrs.get("neurodata_type", "")
    return v.decode() if isinstance(v, bytes) else str(v)


def _find(f: h5py.File, kind: str) -> list[str]:
    out: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if _type(obj) == kind:
            out.append(name)

    f.visititems(visit)
    return sorted(out)


def _ragged(grp: h5py.Group, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A ragged column ``name`` with its ``name_index``: (values, ends)."""
    if name not in grp or f"{name}_index" not in grp:
        return None
    return grp[name][()], np.asarray(grp[f"{name}_index"][()], dtype=np.int64)


def _deref(f: h5py.File, ref: Any) -> str | None:
    try:
        return str(f[ref].name)
    except (KeyError, ValueError, TypeError):
        return None


def _masks(
    f: h5py.File, ps: h5py.Group, path: Path, dims: tuple[int, ...] | None
) -> tuple[scipy.sparse.csc_matrix, tuple[int, ...], bool]:
    """Footprints ``(P, K)`` from a plane segmentation; returns (A, dims, float32 weights?)."""
    K = int(ps["id"].shape[0])
    exact = _ragged(ps, "weight_float64")
    for col, names in (("pixel_mask", ("x", "y")), ("voxel_mask", ("x", "y", "z"))):
        rag = _ragged(ps, col)
        if rag is None:
            continue
        rec, ends = rag
        if rec.dtype.names is None or not set(names) <= set(rec.dtype.names):
            raise FileFormatError(
                f"{path.name}: {ps.name}/{col} has fields {rec.dtype.names}, not {names} + "
                "weight as the NWB schema defines"
            )
        coords = [np.asarray(rec[n], np.int64) for n in names]
        weights = np.asarray(rec["weight"], np.float64)
        f32 = True
        if exact is not None and exact[0].shape == weights.shape:
            weights = np.asarray(exact[0], np.float64)
            f32 = bool(np.array_equal(weights.astype(np.float32).astype(np.float64), weights))
        if dims is None:
            raise FileFormatError(
                f"{path.name}: cannot tell the frame size: the file has no movie "
                "(TwoPhotonSeries) and no images; pass dims=(d1, d2) to cd.open_nwb (masks "
                f"reach x={int(coords[0].max()) if coords[0].size else 0}, "
                f"y={int(coords[1].max()) if coords[1].size else 0})"
            )
        if len(dims) != len(names):
            raise FileFormatError(
                f"{path.name}: {ps.name} has a {col} ({len(names)}-D) but the frames are "
                f"{len(dims)}-D (dims={dims}); pass dims= matching the masks"
            )
        for c, d, n in zip(coords, dims, names, strict=True):
            if c.size and (c.min() < 0 or c.max() >= d):
                raise FileFormatError(
                    f"{path.name}: {ps.name}/{col} has {n} up to {int(c.max())}, outside the "
                    f"frame dims={dims}; pass the right dims="
                )
        rows = np.zeros(weights.size, np.int64)
        stride = 1
        for c, d in zip(coords, dims, strict=True):
            rows += c * stride
            stride *= d
        if ends.size != K or (K and ends[-1] != weights.size):
            raise FileFormatError(
                f"{path.name}: {ps.name}/{col}_index has {ends.size} entries ending at "
                f"{ends[-1] if ends.size else 0} but the table has {K} rows and "
                f"{weights.size} mask entries"
            )
        indptr = np.concatenate([[0], ends])
        A = scipy.sparse.csc_matrix((weights, rows, indptr), shape=(math.prod(dims), K))
        A.sum_duplicates()
        return A, dims, f32
    if "image_mask" in ps:
        ds = ps["image_mask"]
        shp = tuple(int(s) for s in ds.shape)
        if len(shp) not in (3, 4) or shp[0] != K:
            raise FileFormatError(
                f"{path.name}: {ps.name}/image_mask has shape {shp}; ({K}, x, y[, z]) expected"
            )
        if dims is not None and tuple(dims) != shp[1:]:
            raise FileFormatError(
                f"{path.name}: {ps.name}/image_mask frames are {shp[1:]} but dims={dims}"
            )
        dims = shp[1:]
        P = math.prod(dims)
        cols = []
        step = max(1, CHUNK_BYTES // max(1, P * 8))
        for k0 in range(0, K, step):
            block = np.asarray(ds[k0 : k0 + step], np.float64)
            # Fortran pixel order: p = x + d1*y (+ d1*d2*z)
            flat = block.transpose(0, *range(block.ndim - 1, 0, -1)).reshape(block.shape[0], -1)
            cols.append(scipy.sparse.csc_matrix(flat.T))
        A = (
            scipy.sparse.hstack(cols).tocsc()
            if cols
            else scipy.sparse.csc_matrix((P, 0), dtype=np.float64)
        )
        if exact is not None and exact[0].size == P * K:
            A = scipy.sparse.csc_matrix(np.asarray(exact[0], np.float64).reshape(K, P).T)
        f32 = ds.dtype == np.float32 and exact is None
        return A, dims, f32
    raise FileFormatError(
        f"{path.name}: {ps.name} has no pixel_mask, voxel_mask or image_mask; the footprints "
        "are missing (the NWB schema needs one of them)"
    )


def _series(f: h5py.File, key: str, path: Path) -> tuple[da.Array, float | None, str | None]:
    """A RoiResponseSeries' data ``(T, n)`` as a lazy ``(n, T)`` array, its rate, its table."""
    grp = f[key]
    if "data" not in grp:
        raise FileFormatError(f"{path.name}: {key} has no data")
    backend = H5Backend(path, f"{key}/data")
    shp = backend.shape
    if len(shp) == 1:
        shp = (shp[0], 1)
    T, n = shp
    tc = max(1, CHUNK_BYTES // max(1, n * 8))
    data = from_backend(
        backend,
        (time_chunks(T, tc) or (0,), *(((n,),) if len(backend.shape) == 2 else ())),
        f"nwb-{key.replace('/', '-')}-{tokenize_path(path, key)}",
    )
    if data.ndim == 1:
        data = data[:, None]
    rate = None
    st = grp.get("starting_time")
    if isinstance(st, h5py.Dataset) and "rate" in st.attrs:
        rate = float(st.attrs["rate"])
    elif "timestamps" in grp and grp["timestamps"].shape[0] > 1:
        ts = grp["timestamps"][:2]
        rate = 1.0 / float(ts[1] - ts[0]) if ts[1] > ts[0] else None
    table = None
    rois = grp.get("rois")
    if isinstance(rois, h5py.Dataset) and "table" in rois.attrs:
        table = _deref(f, rois.attrs["table"])
    return data.T, rate, table


def tokenize_path(path: Path, key: str) -> str:
    """Cheap identity of one dataset of a file (path, size, mtime, key) for graph names."""
    return tokenize(file_identity(path), key)


def read_nwb(
    path: str | os.PathLike[str],
    *,
    segmentation: str | None = None,
    dims: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Read an NWB file's segmentation, traces, background and movie.

    Returns
    -------
    dict
        ``A`` (scipy CSC ``(P, K)``, Fortran pixel order), ``dims``, ``A_float32``,
        ``traces`` (name → lazy ``(K, T)``: ``C``, ``raw``, ``S``, ``F_dff``, ``Fneu``),
        ``b`` / ``f`` (background), ``W`` / ``b0`` (ring model), ``accepted`` (bool or
        ``None``), ``columns`` (per-ROI numeric columns), ``fr``, ``movie`` (dataset key or
        ``None``), ``external`` (the movie's external file or ``None``), ``images``
        (frame-shaped images by name, ``(d1, d2)``),
        ``segmentation`` (the table's path).

    Raises
    ------
    MissingFileError, FileFormatError
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"NWB file {str(path)!r} does not exist")
    out: dict[str, Any] = {"path": path}
    with open_h5(path) as f:
        tables = _find(f, "PlaneSegmentation")
        if not tables:
            raise FileFormatError(
                f"{path.name} has no PlaneSegmentation (no ROI footprints): it is not an NWB "
                "file with an optical-physiology segmentation. Types found: "
                f"{sorted({_type(o) for o in _objects(f)} - {''})[:12]}"
            )
        if segmentation is not None:
            chosen = [t for t in tables if t == segmentation.strip("/") or t.endswith(segmentation)]
            if not chosen:
                raise FileFormatError(
                    f"segmentation={segmentation!r} is not in {path.name}; its plane "
                    f"segmentations are {tables}"
                )
            main = chosen[0]
        else:
            fg = [t for t in tables if "background" not in t.rsplit("/", 1)[-1].lower()]
            if not fg:
                raise FileFormatError(
                    f"{path.name}: only background plane segmentations {tables}; pass "
                    "segmentation= to choose one"
                )
            main = fg[0]
        out["segmentation"] = main
        movies = _find(f, "TwoPhotonSeries") + _find(f, "OnePhotonSeries")
        out["movie"] = out["external"] = None
        mdims: tuple[int, ...] | None = None
        for m in movies:
            grp = f[m]
            if "external_file" in grp:
                ext = grp["external_file"][0]
                ext = ext.decode() if isinstance(ext, bytes) else str(ext)
                out["external"] = (path.parent / ext).resolve()
                if "dimension" in grp:
                    mdims = tuple(int(x) for x in grp["dimension"][()])
            elif "data" in grp and grp["data"].ndim in (3, 4):
                out["movie"] = f"{m}/data"
                mdims = tuple(int(x) for x in grp["data"].shape[1:])
            if out["movie"] or out["external"]:
                break
        A, dims_t, f32 = _masks(f, f[main], path, dims or mdims or _image_dims(f))
        out["A"], out["dims"], out["A_float32"] = A, dims_t, f32
        K = A.shape[1]
        ps = f[main]
        accepted = None
        columns: dict[str, np.ndarray] = {}
        skip = {"id", "pixel_mask", "voxel_mask", "image_mask", "weight_float64"}
        for name, obj in ps.items():
            if name in skip or name.endswith("_index") or not isinstance(obj, h5py.Dataset):
                continue
            if obj.shape != (K,) or obj.dtype.kind not in "fiub" or f"{name}_index" in ps:
                continue
            columns[name] = np.asarray(obj[()])
        if "accepted" in columns:
            accepted = columns.pop("accepted").astype(bool)
        elif "is_accepted" in columns:  # roiextractors / neuroconv for CaImAn
            accepted = columns.pop("is_accepted").astype(bool)
        elif "iscell" in columns:  # what roiextractors writes for suite2p
            accepted = columns["iscell"].astype(bool)
        elif isinstance(ps.get("iscell"), h5py.Dataset) and ps["iscell"].shape == (K, 2):
            iscell = np.asarray(ps["iscell"][()], np.float64)  # suite2p's own export
            accepted = iscell[:, 0] > 0.5
            columns["iscell_prob"] = iscell[:, 1]
        out["accepted"], out["columns"] = accepted, columns
        traces: dict[str, da.Array] = {}
        fr = None
        bg_tables = [t for t in tables if t != main]
        background: tuple[str, da.Array] | None = None
        for key in _find(f, "RoiResponseSeries"):
            data, rate, table = _series(f, key, path)
            fr = fr or rate
            name = key.rsplit("/", 1)[-1]
            container = key.rsplit("/", 2)[-2] if key.count("/") >= 1 else ""
            if table is not None and table.strip("/") in [t.strip("/") for t in bg_tables]:
                background = (table.strip("/"), data)
                continue
            if table is not None and table.strip("/") != main.strip("/"):
                continue
            if data.shape[0] != K:
                raise FileFormatError(
                    f"{path.name}: {key} has {data.shape[0]} ROIs (data {data.shape[::-1]}) "
                    f"but {main} has {K}; the traces and the footprints disagree"
                )
            role = _ROLES.get(name.lower()) or _ROLES.get(container.lower())  # suite2p: plane0
            if _type(f[key.rsplit("/", 1)[0]]) == "DfOverF" or container.lower() == "dfoverf":
                role = "F_dff"
            if role is not None and role not in traces:
                traces[role] = data
        if not traces:
            raise FileFormatError(
                f"{path.name}: no RoiResponseSeries for {main} ({K} ROIs); the traces are "
                "missing (an NWB segmentation without Fluorescence / DfOverF)"
            )
        out["traces"], out["fr"] = traces, fr
        out["b"] = out["f"] = None
        if background is not None:
            bA, _, _ = _masks(f, f[background[0]], path, dims_t)
            out["b"], out["f"] = bA.toarray(), background[1]
        out["W"] = out["b0"] = None
        for key in _find(f, "DynamicTable"):
            if key.rsplit("/", 1)[-1] == "RingModel":
                grp = f[key]
                ind = _ragged(grp, "indices")
                wts = _ragged(grp, "weights")
                if ind is None or wts is None:
                    raise FileFormatError(f"{path.name}: {key} lacks indices / weights")
                n = int(grp["id"].shape[0])
                indptr = np.concatenate([[0], ind[1]])
                out["W"] = scipy.sparse.csc_matrix((wts[0], ind[0], indptr), shape=(n, n))
        images: dict[str, np.ndarray] = {}
        for key in _find(f, "GrayscaleImage"):
            name = key.rsplit("/", 1)[-1]
            if name == "b0" and "BackgroundImages" in key:
                out["b0"] = np.asarray(f[key][()]).ravel(order="F")
                continue
            img = np.asarray(f[key][()])
            if key.rsplit("/", 2)[-2] == "SegmentationImages":  # neuroconv: (d2, d1)
                img = img.T
            if img.shape == tuple(dims_t) and name not in images:
                images[name] = img
        out["images"] = images
    return out


def _image_dims(f: h5py.File) -> tuple[int, ...] | None:
    """The frame shape from the file's images when there is no movie.

    ``cd.to_nwb``'s images (and any ``Images`` but neuroconv's) are ``(x, y)`` = ``(d1, d2)``;
    neuroconv / roiextractors write their ``SegmentationImages`` transposed, ``(d2, d1)``
    (its pixel masks use ``x`` = rows, checked on its output for CaImAn and suite2p).
    """
    found: list[tuple[int, ...]] = []
    for key in _find(f, "GrayscaleImage"):
        shape = tuple(int(s) for s in f[key].shape)
        if len(shape) != 2:
            continue
        if key.rsplit("/", 2)[-2] == "SegmentationImages":
            found.append(shape[::-1])
        else:
            return shape
    return found[0] if found else None


_ROLES = {
    "denoised": "C",
    "roiresponseseries": "raw",
    "fluorescence": "raw",
    "deconvolved": "S",
    "residual": "YrA",
    "neuropil": "Fneu",
    "dfoverf": "F_dff",
}


def _objects(f: h5py.File) -> list[Any]:
    objs: list[Any] = []
    f.visititems(lambda n, o: objs.append(o))
    return objs


def open_nwb_movie(path: Path, key: str, frame_chunk: int | None) -> MovieSource:
    """The movie dataset ``key`` (``(T, x, y[, z])``) of an NWB file, lazily in time chunks."""
    backend = H5Backend(path, key)
    T, *dims = backend.shape
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"nwb-movie-{tokenize_path(path, key)}-{frames}"
    data = from_backend(backend, (time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(data, backend, f"NWB {path}:{key}", (path,))
