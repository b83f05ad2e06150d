"""Readers: CaImAn memmaps, TIFF, HDF5, zarr, NumPy and dask arrays, and ``cnmf.save()`` files.

Every reader returns a *movie source*: the movie as a chunked dask array ``(T, *dims)`` whose chunks
read only their own frames from the file, plus a direct, dask-free frame reader used by the
interactive fast path (``movie[t]``). File backends are small picklable objects that hold a path,
never the data, so graphs stay small and work unchanged on a distributed cluster.

Pixel order: CaImAn flattens pixels in Fortran order (``p = i + d1*j + d1*d2*k``). Movies come out
frames-first with C-contiguous semantics, ``frame[i, j] = Yr[i + d1*j, t]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
from dask.base import tokenize

from .errors import FileFormatError, OptionError

__all__ = [
    "MovieSource",
    "default_frame_chunk",
    "open_movie",
    "parse_memmap_name",
    "read_cnmf_hdf5",
]

#: Bytes of output a dask chunk of frames aims for.
CHUNK_BYTES = 64 * 2**20


def default_frame_chunk(dims: Sequence[int], itemsize: int = 8) -> int:
    """Frames per time chunk so that one chunk of ``itemsize`` pixels is about 64 MiB."""
    return max(1, CHUNK_BYTES // (math.prod(dims) * itemsize))


def _time_chunks(T: int, frames: int) -> tuple[int, ...]:
    frames = max(1, int(frames))
    full, rest = divmod(T, frames)
    return (frames,) * full + ((rest,) if rest else ())


def _file_identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------------------------
# Backends: picklable, lazily opened, read-only
# --------------------------------------------------------------------------------------------


class _Backend:
    """A lazily opened, read-only array view of a file; pickles as its path only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    _lock: threading.Lock

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_h")}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Close the file handles opened so far (they reopen on the next read)."""
        for name in [k for k in self.__dict__ if k.startswith("_h")]:
            handle = self.__dict__.pop(name)
            close = getattr(handle, "close", None)
            if close is not None:
                with contextlib.suppress(OSError, ValueError, RuntimeError, TypeError):
                    close()

    def __del__(self) -> None:
        if not sys.is_finalizing():
            self.close()


class MemmapBackend(_Backend):
    """A CaImAn memmap (raw little-endian float32, no header) seen as ``(T, *dims)``.

    ``order="C"``: the file is ``(P, T)`` C-ordered (pixel-contiguous, written by
    ``cm.save_memmap(order='C')``). ``order="F"``: ``(P, T)`` F-ordered, i.e. frame-contiguous
    (written by ``MotionCorrect``). Pixels inside are in Fortran order in both cases.
    """

    def __init__(
        self, path: Path, dims: tuple[int, ...], T: int, order: str, dtype: Any = np.float32
    ):
        self.path = Path(path)
        self.dims = tuple(int(d) for d in dims)
        self.T = int(T)
        self.order = order
        self.dtype = np.dtype(dtype)
        self.shape = (self.T, *self.dims)
        self._lock = threading.Lock()

    def _open_view(self) -> np.ndarray:
        rev = self.dims[::-1]
        nd = len(self.dims)
        if self.order == "F":
            raw = np.memmap(self.path, self.dtype, "r", shape=(self.T, *rev))
            return raw.transpose(0, *range(nd, 0, -1))
        raw = np.memmap(self.path, self.dtype, "r", shape=(*rev, self.T))
        return raw.transpose(nd, *range(nd - 1, -1, -1))

    def view(self) -> np.ndarray:
        """The whole movie as a zero-copy, read-only ``(T, *dims)`` view of the file.

        Kept open (for the interactive fast path); pages it touches stay mapped.
        """
        h = self.__dict__.get("_h_view")
        if h is None:
            with self._lock:
                h = self.__dict__.get("_h_view")
                if h is None:
                    h = self._h_view = self._open_view()
        return h

    def __getitem__(self, key: Any) -> np.ndarray:
        """``key`` as a view of a fresh read-only mapping of the file.

        No copy: the frames are read from the page cache by whoever consumes the block, in
        the file's own memory order (blocks of a frame-major memmap are transposed views of
        contiguous rows). The mapping closes when the block is released, so bulk (dask)
        reads do not keep the file's pages mapped into the process.
        """
        return self._open_view()[key]


class NumpyMemmapBackend(_Backend):
    """A contiguous ``np.memmap`` (any layout) reopened from its file on each read."""

    def __init__(self, arr: np.memmap):
        self.path = Path(arr.filename)
        self.offset = int(arr.offset)
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.order = "C" if arr.flags.c_contiguous else "F"
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        view = np.memmap(
            self.path, self.dtype, "r", offset=self.offset, shape=self.shape, order=self.order
        )
        try:
            return np.array(view[key], order="K")
        finally:
            del view


class TiffBackend(_Backend):
    """A TIFF movie, read page range by page range with tifffile.

    2D movies are ``(T, d1, d2)`` (one page per frame); volumetric movies are stored by tifffile
    as ``(T, d1, d2, d3)`` with ``d1`` pages of ``(d2, d3)`` per time point.
    """

    def __init__(self, path: Path, series: int = 0):
        import tifffile

        self.path = Path(path)
        self.series = series
        with tifffile.TiffFile(self.path) as tif:
            s = tif.series[series]
            shape = tuple(int(x) for x in s.shape)
            self.dtype = np.dtype(s.dtype)
            npages = len(s.pages)
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

    def _file(self) -> Any:
        import tifffile

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


class H5Backend(_Backend):
    """One HDF5 dataset, opened read-only on first use."""

    def __init__(self, path: Path, key: str):
        import h5py

        self.path = Path(path)
        self.key = key
        with h5py.File(self.path, "r") as f:
            ds = f[key]
            self.shape = tuple(int(x) for x in ds.shape)
            self.dtype = np.dtype(ds.dtype)
        self._lock = threading.Lock()

    def _ds(self) -> Any:
        import h5py

        h = self.__dict__.get("_h_ds")
        if h is None:
            self._h_file = h5py.File(self.path, "r")
            h = self._h_ds = self._h_file[self.key]
        return h

    def __getitem__(self, key: Any) -> np.ndarray:
        with self._lock:
            return np.asarray(self._ds()[key])


class CSCColumnsBackend(_Backend):
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

    def _grp(self) -> Any:
        import h5py

        h = self.__dict__.get("_h_grp")
        if h is None:
            self._h_file = h5py.File(self.path, "r")
            h = self._h_grp = self._h_file[self.group]
        return h

    def columns(self, k0: int, k1: int) -> scipy.sparse.csc_matrix:
        """Columns ``k0:k1`` as a scipy CSC matrix."""
        with self._lock:
            g = self._grp()
            indptr = np.asarray(g["indptr"][k0 : k1 + 1], dtype=np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            data = np.asarray(g["data"][lo:hi])
            indices = np.asarray(g["indices"][lo:hi])
        return scipy.sparse.csc_matrix((data, indices, indptr - lo), shape=(self.shape[0], k1 - k0))

    def __getitem__(self, key: Any) -> Any:
        import sparse

        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        k0, k1, step = cols.indices(self.shape[1])
        m = self.columns(k0, k1)
        if step != 1:
            m = m[:, ::step]
        return sparse.COO.from_scipy_sparse(m[rows])


def _from_backend(backend: _Backend, chunks: Any, name: str, meta: Any = None) -> da.Array:
    if meta is None:
        meta = np.empty((0,) * backend.ndim, backend.dtype)
    return da.from_array(
        backend, chunks=chunks, name=name, meta=meta, asarray=False, inline_array=True
    )


# --------------------------------------------------------------------------------------------
# Movie sources
# --------------------------------------------------------------------------------------------


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
    views: MemmapBackend | None = None

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
        return _from_backend(self.views, (tuple(chunks), *[(d,) for d in self.dims]), name)

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


_MMAP_KEYS = ("d1", "d2", "d3", "order", "frames")


def parse_memmap_name(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], str, int]:
    """Parse CaImAn's memmap file name ``..._d1_<d1>_d2_<d2>_d3_<d3>_order_<C|F>_frames_<T>.mmap``.

    Like CaImAn, split the stem on ``_`` and take the token after the *last* ``d1``, ``d2``,
    ``d3``, ``order`` and ``frames``.

    Returns
    -------
    dims, order, T
        ``dims`` is ``(d1, d2)`` when ``d3 == 1`` else ``(d1, d2, d3)``.

    Raises
    ------
    FileFormatError
        If a field is missing or malformed.
    """
    stem = Path(path).name
    if stem.endswith(".mmap"):
        stem = stem[: -len(".mmap")]
    tokens = stem.split("_")
    found: dict[str, str] = {}
    for i, tok in enumerate(tokens[:-1]):
        if tok in _MMAP_KEYS:
            found[tok] = tokens[i + 1]
    missing = [k for k in _MMAP_KEYS if k not in found]
    if missing:
        raise FileFormatError(
            f"memmap file name {Path(path).name!r} lacks the field(s) {missing}; CaImAn names "
            "memmaps '..._d1_<d1>_d2_<d2>_d3_<d3>_order_<C|F>_frames_<T>.mmap'. Rename the file, "
            "or open it with cd.open_movie(np.memmap(...)) and explicit dims."
        )
    try:
        d1, d2, d3, T = (int(found[k]) for k in ("d1", "d2", "d3", "frames"))
    except ValueError as e:
        raise FileFormatError(
            f"memmap file name {Path(path).name!r} has a non-integer size field: {found}"
        ) from e
    order = found["order"]
    if order not in ("C", "F"):
        raise FileFormatError(
            f"memmap file name {Path(path).name!r} has order {order!r}; expected 'C' or 'F'"
        )
    if min(d1, d2, d3, T) < 1:
        raise FileFormatError(f"memmap file name {Path(path).name!r} has a zero size: {found}")
    dims = (d1, d2) if d3 == 1 else (d1, d2, d3)
    return dims, order, T


def _open_memmap(path: Path, frame_chunk: int | None) -> MovieSource:
    dims, order, T = parse_memmap_name(path)
    P = math.prod(dims)
    expected = 4 * P * T
    size = path.stat().st_size
    if size != expected:
        raise FileFormatError(
            f"memmap {path.name} has {size:,} bytes but its name says "
            f"dims={dims}, T={T}: 4 x {P} x {T} = {expected:,} bytes of float32. The file is "
            "truncated, still being written, or was renamed; re-export it from CaImAn."
        )
    backend = MemmapBackend(path, dims, T, order)
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"caiman-memmap-{tokenize(_file_identity(path), order, dims, T, frames)}"
    data = _from_backend(backend, (_time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(
        data,
        _MemmapReader(backend),
        f"CaImAn memmap ({order} order) {path}",
        (path,),
        views=backend,
    )


class _MemmapReader:
    """Dask-free reader over a memmap backend (keeps the zero-copy view, opened lazily)."""

    def __init__(self, backend: MemmapBackend):
        self.backend = backend

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.backend.view()[key]


def _open_tiff(path: Path, frame_chunk: int | None) -> MovieSource:
    backend = TiffBackend(path)
    T, *dims = backend.shape
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"caiman-tiff-{tokenize(_file_identity(path), frames)}"
    data = _from_backend(backend, (_time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(data, backend, f"TIFF {path}", (path,))


def _open_h5_movie(path: Path, key: str | None, frame_chunk: int | None) -> MovieSource:
    import h5py

    with _open_h5(path) as f:
        if key is None:
            dsets: list[str] = []
            f.visititems(lambda n, o: dsets.append(n) if isinstance(o, h5py.Dataset) else None)
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
    T, *dims = backend.shape
    frames = frame_chunk or default_frame_chunk(dims)
    name = f"caiman-h5-{tokenize(_file_identity(path), key, frames)}"
    data = _from_backend(backend, (_time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(data, backend, f"HDF5 {path}:{key}", (path,))


def _open_zarr_movie(path: Path, key: str | None, frame_chunk: int | None) -> MovieSource:
    import zarr

    node = zarr.open(str(path), mode="r", path=key or "")
    if not isinstance(node, zarr.Array):
        raise OptionError(f"zarr store {path} at {key!r} is a group; pass key='<array path>'.")
    data = da.from_zarr(node, chunks=None)
    if frame_chunk:
        data = data.rechunk({0: frame_chunk})
    return MovieSource(data, node, f"zarr {path}:{key or ''}", (path,))


def _open_array(arr: Any, frame_chunk: int | None) -> MovieSource:
    if isinstance(arr, da.Array):
        data = arr
        if any(len(c) > 1 for c in data.chunks[1:]):
            data = data.rechunk({i: -1 for i in range(1, data.ndim)})
        if frame_chunk:
            data = data.rechunk({0: frame_chunk})
        return MovieSource(data, None, f"dask array {data.name}")
    if (
        isinstance(arr, np.memmap)
        and arr.filename
        and (arr.flags.c_contiguous or arr.flags.f_contiguous)
    ):
        # read per chunk through the file (a np.memmap would pickle as its whole data)
        backend = NumpyMemmapBackend(arr)
        dims = arr.shape[1:]
        frames = frame_chunk or default_frame_chunk(dims)
        path = Path(arr.filename)
        name = (
            f"numpy-memmap-{tokenize(_file_identity(path), arr.offset, arr.shape, arr.dtype.str)}"
        )
        data = _from_backend(
            backend, (_time_chunks(arr.shape[0], frames), *[(d,) for d in dims]), name
        )
        return MovieSource(data, arr, f"NumPy memmap {path}", (path,))
    if isinstance(arr, np.memmap):
        desc = f"NumPy memmap {arr.filename}"
        files: tuple[Path, ...] = (Path(arr.filename),) if arr.filename else ()
    else:
        desc = "NumPy array"
        files = ()
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    dims = arr.shape[1:]
    frames = frame_chunk or default_frame_chunk(dims)
    data = da.from_array(arr, chunks=(_time_chunks(arr.shape[0], frames), *[(d,) for d in dims]))
    return MovieSource(data, arr, desc, files)


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
    FileNotFoundError, FileFormatError
        Missing file, unknown suffix, a memmap whose size disagrees with its name.
    """
    if isinstance(source, MovieSource):
        return source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"movie file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".mmap":
            return _open_memmap(path, frame_chunk)
        if suffix in (".tif", ".tiff"):
            return _open_tiff(path, frame_chunk)
        if suffix in (".h5", ".hdf5", ".hdf"):
            return _open_h5_movie(path, key, frame_chunk)
        if suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists()):
            return _open_zarr_movie(path, key, frame_chunk)
        if suffix == ".npy":
            return _open_array(np.load(path, mmap_mode="r"), frame_chunk)
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
        return _open_array(source, frame_chunk)
    raise OptionError(
        f"movie must be a path or an array, got {type(source).__name__}; pass a CaImAn memmap, "
        "TIFF, HDF5, zarr or .npy path, or a NumPy / dask array of shape (T, *dims)."
    )


# --------------------------------------------------------------------------------------------
# CaImAn cnmf.save() HDF5
# --------------------------------------------------------------------------------------------


def _open_h5(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise FileFormatError(
            f"cannot open {str(path)!r} as HDF5 ({e}); the file is truncated, still being "
            "written, or not an HDF5 file. Re-save it with CaImAn's cnmf.save()."
        ) from e


def _is_none(obj: Any) -> bool:
    """True for CaImAn's encoding of ``None``: a scalar string dataset ``'NoneType'``."""
    import h5py

    if not isinstance(obj, h5py.Dataset) or obj.shape != ():
        return False
    if obj.dtype.kind not in ("O", "S", "U"):
        return False
    v = obj[()]
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v == "NoneType"


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
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CNMF file {str(path)!r} does not exist")
    ident = _file_identity(path)
    file_size = ident[1]
    out: dict[str, Any] = {"path": path}
    with _open_h5(path) as f:
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
            shape = tuple(int(x) for x in node["shape"][()])
            indptr = node["indptr"]
            if indptr.shape != (shape[1] + 1,) or (
                shape[1] > 0 and int(indptr[-1]) != node["data"].shape[0]
            ):
                raise FileFormatError(
                    f"{path.name}: /estimates/{name} CSC group is inconsistent: shape {shape}, "
                    f"indptr of length {indptr.shape[0]}, {node['data'].shape[0]} stored values"
                )
            backend = CSCColumnsBackend(path, f"estimates/{name}", shape, node["data"].dtype)
            kc = max(1, min(component_chunk, shape[1])) if name == "A" else max(1, shape[1])
            import sparse

            meta = sparse.COO.from_numpy(np.zeros((0, 0), dtype=backend.dtype))
            out[name] = _from_backend(
                backend,
                ((shape[0],), _time_chunks(shape[1], kc) or (0,)),
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
            backend = H5Backend(path, f"estimates/{name}")
            shp = backend.shape
            if name in _FRAME_KEYS and len(shp) == 2:
                tc = frame_chunk or max(1, CHUNK_BYTES // max(1, shp[0] * 8))
                chunks: Any = ((shp[0],), _time_chunks(shp[1], tc) or (0,))
            else:
                chunks = tuple((s,) if s else (0,) for s in shp)
            out[name] = _from_backend(backend, chunks, f"caiman-h5-{name}-{tokenize(ident)}")
        for name in ("idx_components", "idx_components_bad"):
            node = est.get(name)
            if node is None or _is_none(node):
                out[name] = None
            else:
                arr = _parse_small(node[()])
                out[name] = np.asarray(arr).astype(np.int64).ravel()
        extras: dict[str, Any] = {}
        for name in _EXTRA_KEYS:
            node = est.get(name)
            if isinstance(node, h5py.Dataset) and not _is_none(node):
                extras[name] = _parse_small(node[()])
        out["extras"] = extras
        fr = f.get("params/data/fr")
        out["fr"] = float(fr[()]) if isinstance(fr, h5py.Dataset) and not _is_none(fr) else None
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
            dims = tuple(int(x) for x in np.asarray(node[()]).ravel())
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


def sparse_to_scipy(x: Any) -> scipy.sparse.csc_matrix:
    """A pydata-sparse, scipy-sparse or dense 2D array as scipy CSC."""
    if scipy.sparse.issparse(x):
        return scipy.sparse.csc_matrix(x)
    if hasattr(x, "to_scipy_sparse"):
        return scipy.sparse.csc_matrix(x.to_scipy_sparse())
    return scipy.sparse.csc_matrix(np.asarray(x))
