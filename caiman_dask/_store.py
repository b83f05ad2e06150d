"""Zarr persistence: movies as OME-Zarr images, projections, and the factors; resumable.

Layout of a store written by :func:`to_zarr` (zarr v3 by default, v2 on request)::

    results.zarr/                     root group; attrs["caiman_dask"] = version, complete,
                                      source files, parameters, dims, T, K, fr
      rcm/ rcb/ residuals/            one OME-Zarr image per movie (v0.5 on zarr v3, v0.4 on
        0                             zarr v2): array (T, y, x) or (T, z, y, x)
      projections/<movie>/<kind>/     one OME-Zarr image per projection: array 0 (y, x)
      factors/                        A/{data,indices,indptr} (CSC, Fortran pixel order),
                                      C, b, f, b0, W/{...}, YrA, S, F_dff, dims,
                                      idx_components, idx_components_bad
      _progress/                      written-chunk markers (removed when complete)

Writes are chunk- (or shard-) aligned, one dask task per chunk / shard, so memory is bounded by
the number of threads times one write unit, independently of T. A chunk is marked written only
after it is stored; a run killed at any moment and started again with the same arguments writes
only what is missing and ends byte-identical to a clean run. The root attribute
``caiman_dask.complete`` becomes true only at the very end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import dask.array as da
import numcodecs
import numpy as np
import zarr
import zarr.codecs
from dask.base import tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ._compute import compute
from ._graph import ring_movies_graph
from ._model import CNMFModel, _sparse_compute
from ._movie import rcb, rcm, residuals
from ._options import choose, positive_int
from ._ring_pass import ring_coefficients
from ._statistics import (
    KINDS,
    Kind,
    images,
    nonfinite_pixels,
    project,
    remember,
    stats_of_blocks,
)
from ._version import __version__
from .errors import (
    CaimanDaskError,
    OptionError,
    StoreError,
    StoreLockedError,
    StoreWriteError,
)

__all__ = [
    "CODECS",
    "MOVIE_NAMES",
    "ZARR_FORMATS",
    "Codec",
    "MovieName",
    "ZarrFormat",
    "root_attrs",
    "to_zarr",
]

#: Compression of every array of a store: Zstandard, Blosc-LZ4, or none.
Codec = Literal["zstd", "lz4", "none"]
CODECS: tuple[Codec, ...] = get_args(Codec)
#: Zarr format of a store: 3 (OME-Zarr 0.5) or 2 (OME-Zarr 0.4).
ZarrFormat = Literal[2, 3]
ZARR_FORMATS: tuple[ZarrFormat, ...] = get_args(ZarrFormat)
#: The movies a store can hold.
MovieName = Literal["rcm", "rcb", "residuals"]
MOVIE_NAMES: tuple[MovieName, ...] = get_args(MovieName)
LAYOUT_VERSION = 1
#: Uncompressed bytes a zarr chunk of a movie aims for.
CHUNK_TARGET = 16 * 2**20


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _compressors(codec: Codec, zarr_format: ZarrFormat) -> Any:
    if codec == "none":
        return None
    if zarr_format == 3:
        if codec == "zstd":
            return (zarr.codecs.ZstdCodec(level=3),)
        return (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    if codec == "zstd":
        return (numcodecs.Zstd(level=3),)
    return (numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),)


def _axes(ndim_space: int, fr: float | None) -> tuple[list[dict[str, str]], list[float]]:
    """OME axes ``t`` (seconds when the frame rate is known) and ``[z,] y, x`` (pixels)."""
    time: dict[str, str] = {"name": "t", "type": "time"}
    if fr:
        time["unit"] = "second"
    axes = [time] + [{"name": n, "type": "space"} for n in ["z", "y", "x"][-ndim_space:]]
    scale = [1.0 / fr if fr else 1.0] + [1.0] * ndim_space
    return axes, scale


def _ome_attrs(
    name: str, axes: list[dict[str, str]], scale: list[float], zarr_format: ZarrFormat
) -> dict[str, Any]:
    ms: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }
    if zarr_format == 3:
        return {"ome": {"version": "0.5", "multiscales": [ms]}}
    return {"multiscales": [{"version": "0.4", **ms}]}


def _source_files(model: CNMFModel) -> list[dict[str, Any]]:
    out = []
    for role, p in sorted(model.files.items()):
        p = Path(p)
        entry: dict[str, Any] = {"role": role, "name": p.name, "path": str(p.resolve())}
        if p.exists():
            st = p.stat()
            entry.update(size=st.st_size, mtime=st.st_mtime)
        out.append(entry)
    return out


def _json(x: Any) -> Any:
    """JSON-safe version of parameters (tuples → lists, numpy scalars → Python)."""
    return json.loads(
        json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    )


def _our_params(path: Path) -> dict[str, Any] | None:
    """The export parameters recorded in a store's root, or ``None`` if it is not ours."""
    try:
        attrs = root_attrs(path)
    except StoreError:
        return None
    params = attrs.get("parameters")
    return params if isinstance(params, dict) else None


def _create_root(path: Path, zarr_format: ZarrFormat, attrs: dict[str, Any]) -> None:
    """Create the store with its root metadata in one atomic step (a directory rename), so a
    path is either absent or recognisably ours, whenever a run is killed. (Called with the
    path claimed, so leftovers of other runs are stale: a run killed here.)"""
    for stale in path.parent.glob(f".{path.name}.creating-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        zarr.create_group(str(tmp), zarr_format=zarr_format, attributes=attrs)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _positive_int(name: str, value: Any) -> int | None:
    """``value`` if it is ``None`` or an int >= 1, else an :class:`OptionError`."""
    return positive_int(name, value, what="frames", default="about 16 MiB per chunk")


def _check_dtype(dtype: Any) -> np.dtype | None:
    """The stored movies' dtype: ``None`` (the movies' own), a float or an integer dtype."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise OptionError(
            f"dtype={dtype!r} is not a NumPy dtype; pass e.g. 'float32', 'float64', 'int16' or "
            "None for the movies' own dtype."
        ) from e
    if dt.kind not in "fiu" or dt.itemsize > 8:
        raise OptionError(
            f"dtype={dtype!r} ({dt}) cannot store a movie; pass a float dtype ('float32', "
            "'float64') or an integer dtype ('int16', 'uint16', ...), or None."
        )
    return dt


def _check_integer_range(built: Mapping[str, Any], dt: np.dtype) -> None:
    """Refuse an integer dtype that cannot hold a movie's exact range (it would wrap around).

    Values are converted like ``numpy.ndarray.astype``: fractions are truncated toward zero.
    """
    info = np.iinfo(dt)
    for n, mv in built.items():
        lo, hi = float(mv.min), float(mv.max)
        bad = nonfinite_pixels(mv)
        if bad:
            raise OptionError(
                f"dtype={dt.name!r}: movie {n!r} holds non-finite values (NaN or inf) at {bad} "
                "pixels; an integer dtype cannot store them. Pass a float dtype such as "
                "'float32', or replace them in the movie or factors first."
            )
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise OptionError(
                f"dtype={dt.name!r}: movie {n!r} has no finite range (min {lo}, max {hi}); an "
                "integer dtype cannot store it. Pass a float dtype such as 'float32'."
            )
        if math.trunc(lo) < info.min or math.trunc(hi) > info.max:
            raise OptionError(
                f"dtype={dt.name!r} holds {info.min}..{info.max}, but movie {n!r} ranges from "
                f"{lo:.6g} to {hi:.6g} (exact); storing it would wrap values around. Pass a "
                "float dtype ('float32'), a wider integer dtype (e.g. 'int32'), or scale the "
                "movie first."
            )


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[None]:
    """Hold an exclusive claim on ``path`` for one export: a lock file beside it.

    ``flock`` locks are released by the kernel when their process ends, however it ends, so
    a killed export never blocks the next one; the lock file is removed when the export ends.
    A second export started while one runs gets a :class:`StoreLockedError` at once.
    """
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from e
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _write_error(path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"another caiman_dask export to {path} is running ({holder}); wait for it to "
                "finish or stop it, then run the export again (it resumes where the other "
                "stopped), or choose another path."
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            break  # a filesystem without locks: run unclaimed, as before
        try:  # the holder may have removed the file as we opened it: claim the current one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _write_error(path: Path, e: OSError) -> StoreWriteError:
    """A clear error for a failed write of the store at ``path``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = (
            "the disk is full (or a quota or file size limit was reached). Free some space "
            "or export elsewhere; running the same export again resumes it. The store is "
            "marked incomplete until then"
        )
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "this place is not writable. Choose a directory you can write to"
    else:
        why = "check the path, free disk space and permissions"
    return StoreWriteError(f"cannot write the store {path}: {e.strerror or e} ({why}).")


#: errno values of a write that cannot succeed here: a full disk, a quota, a file size limit,
#: no permission, a read-only file system.
_WRITE_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn the operating system's write errors into a :class:`StoreWriteError` (other
    errors, of reading the inputs for instance, pass unchanged)."""
    try:
        yield
    except CaimanDaskError:
        raise
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(path, e) from e


def _set_root_attrs_atomic(path: Path, zarr_format: ZarrFormat, attrs: dict[str, Any]) -> None:
    """Replace the root attributes by writing a new metadata file and renaming it over."""
    name = "zarr.json" if zarr_format == 3 else ".zattrs"
    meta_path = path / name
    if zarr_format == 3:
        meta = json.loads(meta_path.read_text())
        meta["attributes"] = attrs
    else:
        meta = attrs
    tmp = path / f".{name}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)


# ---------------------------------------------------------------------------------------------
# the export
# ---------------------------------------------------------------------------------------------


def to_zarr(
    model: CNMFModel,
    path: str | os.PathLike[str],
    *,
    movies: Sequence[MovieName] | None = None,
    components: Any = "all",
    traces: str = "C",
    projections: Sequence[Kind] | None = ("mean", "std", "min", "max", "corr"),
    factors: bool = True,
    codec: Codec = "zstd",
    zarr_format: ZarrFormat = 3,
    chunk_frames: int | None = None,
    shard_frames: int | None = None,
    dtype: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export movies, projections and factors to a zarr store, streamed and resumable.

    Parameters
    ----------
    model
        A :class:`~caiman_dask.CNMFModel`.
    path
        The store directory (``*.zarr``).
    movies
        Which of ``"rcm"``, ``"rcb"``, ``"residuals"`` to write (default: those the model
        has — ``rcb`` needs a background, ``residuals`` the movie ``Y``).
    components, traces
        The RCM's component selection and trace matrix (see :func:`caiman_dask.rcm`).
    projections
        Projection kinds to store for each written movie (``None`` or ``()`` for none).
    factors
        Store the factors under ``factors/`` so any language can rebuild the model.
    codec
        ``"zstd"`` (default), ``"lz4"`` (Blosc-LZ4) or ``"none"``.
    zarr_format
        3 (default; OME-Zarr 0.5 metadata, ``dimension_names``) or 2 (OME-Zarr 0.4).
    chunk_frames
        Frames per zarr chunk (default: about 16 MiB per chunk).
    shard_frames
        Frames per shard (zarr v3 only; a multiple of ``chunk_frames``). Each dask task writes
        one whole shard, so writes are always shard-aligned.
    dtype
        Stored dtype of the movies (default: the movies' dtype).
    overwrite
        Replace an existing store written by caiman_dask. A directory that was not written
        by caiman_dask is never replaced.
    progress
        Show dask's progress bar.

    Returns
    -------
    pathlib.Path
        The store path.

    Raises
    ------
    StoreError
        The path exists and is not a caiman_dask store, or is one with other parameters and
        ``overwrite`` is false.
    OptionError
        Bad option values (the message lists the valid ones), or a movie the model cannot
        make.

    Notes
    -----
    Re-running an interrupted export with the same arguments resumes it: only missing chunks
    are computed, and the result is byte-identical to an uninterrupted run. Re-running a
    complete export with the same arguments does nothing.
    """

    # every option is checked before anything is created on disk
    if not isinstance(path, str | os.PathLike):
        raise OptionError(
            f"path={path!r} ({type(path).__name__}) is not a path; pass the store directory, "
            "e.g. 'results.zarr'."
        )
    path = Path(path)
    codec = choose("codec", codec, CODECS)
    zarr_format = choose("zarr_format", zarr_format, ZARR_FORMATS)
    chunk_frames = _positive_int("chunk_frames", chunk_frames)
    shard_frames = _positive_int("shard_frames", shard_frames)
    store_dt = _check_dtype(dtype)
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"{path} exists and is a file, not a caiman_dask store; refusing to touch it. "
            "Choose another path."
        )
    if shard_frames is not None and zarr_format != 3:
        raise OptionError(
            f"shard_frames={shard_frames} needs zarr_format=3 (zarr v2 has no shards); pass "
            "zarr_format=3 or drop shard_frames"
        )
    available = [n for n in MOVIE_NAMES if _available(model, n)]
    if movies is None:
        names = available
    else:
        names = [choose("movies", n, MOVIE_NAMES) for n in movies]
        for n in names:
            if n not in available:
                raise OptionError(
                    f"movie {n!r} is not available for this model: "
                    + ("it has no background" if n == "rcb" else "it has no movie Y")
                    + f"; it can write {available}"
                )
    kinds = tuple(choose("projections", k, KINDS) for k in projections or ())
    built: dict[str, Any] = {n: _build_movie(model, n, components, traces, dtype) for n in names}
    dims = model.dims
    frame_bytes = math.prod(dims) * max((mv.dtype.itemsize for mv in built.values()), default=8)
    cf = chunk_frames or max(1, min(model.T, CHUNK_TARGET // frame_bytes))
    if shard_frames is not None and (shard_frames < cf or shard_frames % cf):
        raise OptionError(
            f"shard_frames={shard_frames} must be a positive multiple of chunk_frames={cf}"
        )
    unit = shard_frames or cf
    if store_dt is not None and store_dt.kind in "iu":
        _check_integer_range(built, store_dt)
    # compute the movies in write units: no rechunking, and blocks small enough that the
    # allocator reuses their memory instead of faulting in fresh pages for every block
    built = {n: _build_movie(model, n, components, traces, dtype, unit) for n in names}
    params = _json(
        {
            "layout": LAYOUT_VERSION,
            "model": model.token,
            "movies": names,
            "components": components
            if isinstance(components, str)
            else np.asarray(model.components(components)).tolist(),
            "traces": traces,
            "projections": list(kinds),
            "factors": factors,
            "codec": codec,
            "zarr_format": zarr_format,
            "chunk_frames": cf,
            "shard_frames": shard_frames,
            "dtypes": {
                n: str(mv.dtype if store_dt is None else store_dt) for n, mv in built.items()
            },
        }
    )
    with _claim(path), _writing(path):
        _export(
            model,
            path,
            params,
            built,
            kinds,
            names,
            store_dt,
            cf,
            shard_frames,
            unit,
            zarr_format,
            codec,
            factors,
            overwrite,
            progress,
            corr="corr" in kinds,
        )
    return path


def _export(
    model: CNMFModel,
    path: Path,
    params: dict[str, Any],
    built: Mapping[str, Any],
    kinds: tuple[Kind, ...],
    names: list[MovieName],
    store_dt: np.dtype | None,
    cf: int,
    shard_frames: int | None,
    unit: int,
    zarr_format: ZarrFormat,
    codec: Codec,
    factors: bool,
    overwrite: bool,
    progress: bool,
    corr: bool,
) -> None:
    """The export proper, once every option is checked and the path is claimed."""
    dims = model.dims
    if path.exists():
        old = _our_params(path)
        if old is None:
            raise StoreError(
                f"{path} exists and was not written by caiman_dask; refusing to touch it. "
                "Choose another path or remove it yourself."
            )
        same = old == params
        if overwrite:
            shutil.rmtree(path)
        elif not same:
            raise StoreError(
                f"{path} holds a caiman_dask export with other parameters; pass "
                "overwrite=True to replace it, or choose another path."
            )
        elif root_attrs(path).get("complete"):
            return  # the same export, already complete: nothing to do
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_root(path, zarr_format, _root_meta(model, params, complete=False))
    prog = _open_or_create_group(path / "_progress", zarr_format, {})
    comp = _compressors(codec, zarr_format)

    # factors: small; written first and marked when done
    if factors:
        _step(prog, "factors", zarr_format, lambda: _write_factors(model, path, zarr_format, comp))

    # movies: one dask task per chunk / shard, each marked when written. A streaming movie
    # (residuals, ring background) whose projections are pending on a fresh run accumulates
    # their statistics from the very blocks it writes: one pass over Y for both.
    sources: list[da.Array] = []
    targets: list[Any] = []  # (zarr arrays behind a marker: da.store's ArrayLike)
    regions: list[tuple[slice, ...]] = []
    fused: list[tuple[Any, Any]] = []
    shared = _shared_ring_units(built, unit, model.T)
    for n, mv in built.items():
        store_dtype = mv.dtype if store_dt is None else store_dt
        arr = _movie_array(
            path / n, mv.shape, store_dtype, cf, shard_frames, comp, zarr_format, model, n
        )
        nunits = -(-model.T // unit)
        marks = _marker_array(prog, n, nunits, zarr_format)
        done = _done_units(marks)
        native = shared.get(n)
        if native is None:
            native = _as_write_units(mv, unit, mv.dtype, model.T)
        units = native if native.dtype == store_dtype else native.astype(store_dtype)
        if (
            kinds
            and mv.description.streaming
            and not done.any()
            and not _step_done(prog, f"projections-{n}", zarr_format)
        ):
            fused.append((mv, stats_of_blocks(native, corr)))
        for i in np.flatnonzero(~done):
            t0, t1 = int(i) * unit, min(model.T, (int(i) + 1) * unit)
            sources.append(units.blocks[int(i)])
            targets.append(_MarkedTarget(arr, marks, int(i)))
            regions.append((slice(t0, t1),) + (slice(None),) * len(dims))
    pass_stats: dict[str, Any] = {}
    if sources:
        stored = da.store(sources, targets, regions=regions, lock=False, compute=False)
        parts = stored if isinstance(stored, tuple) else (stored,)
        stats = compute([_join(parts), *(g for _, g in fused)], progress)[1:]
        for (mv, _), st in zip(fused, stats, strict=True):
            pass_stats[mv.kind] = st
            remember(mv, corr, st)  # (later projections of this movie cost nothing)

    # projections: from the structure (RCM, RCB) or from the statistics of the write units
    if kinds:
        _open_or_create_group(path / "projections", zarr_format, {})
    for n, mv in built.items():
        if not kinds:
            continue

        def write_proj(n: str = n, mv: Any = mv) -> None:
            _open_or_create_group(path / "projections" / n, zarr_format, {})
            if mv.description.streaming:
                st = pass_stats.get(mv.kind)
                if st is None:
                    # a resumed run: one pass over the same write units as a fresh run, so
                    # the merge order, and so every stored byte, is the same
                    units = _as_write_units(mv, unit, mv.dtype, model.T)
                    st = compute([stats_of_blocks(units, corr)], progress)[0]
                imgs = images(st, kinds, mv)
            else:
                imgs = project(mv, list(kinds), progress=progress)
            for k in kinds:
                _write_image(
                    path / "projections" / n / k, imgs[k], f"{n} {k}", model, zarr_format, comp
                )

        _step(prog, f"projections-{n}", zarr_format, write_proj)

    # complete: drop progress markers and writes a kill cut short, then flip the flag (last)
    shutil.rmtree(path / "_progress", ignore_errors=True)
    _remove_partial_writes(path)
    _set_root_attrs_atomic(path, zarr_format, _root_meta(model, params, complete=True))


#: zarr's LocalStore writes ``<file>.<uuid4 hex>.partial``, then renames it; a process killed
#: in between leaves it behind (never read by zarr).
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _remove_partial_writes(path: Path) -> None:
    """Delete the temporary files of chunk writes interrupted by a kill (their chunks have
    been written again since), so a resumed store holds the same files as a fresh one."""
    for p in path.rglob("*.partial"):
        if _PARTIAL.search(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _available(model: CNMFModel, name: MovieName) -> bool:
    if name == "rcm":
        return True
    if name == "rcb":
        return model.background != "none" and (model.background == "lowrank" or model.Y is not None)
    return model.Y is not None


def _build_movie(
    model: CNMFModel,
    name: MovieName,
    components: Any,
    traces: str,
    dtype: Any,
    frame_chunk: int | None = None,
) -> Any:
    if name == "rcm":
        return rcm(model, components, traces=traces, frame_chunk=frame_chunk)
    if name == "rcb":
        return rcb(model, frame_chunk=frame_chunk)
    return residuals(model, frame_chunk=frame_chunk)


def _root_meta(model: CNMFModel, params: dict[str, Any], *, complete: bool) -> dict[str, Any]:
    return {
        "caiman_dask": _json(
            {
                "version": __version__,
                "layout": LAYOUT_VERSION,
                "complete": complete,
                "dims": list(model.dims),
                "T": model.T,
                "K": model.K,
                "fr": model.fr,
                "background": model.background,
                "movie_pixel_order": "C (frames are arrays (T, *dims))",
                "factor_pixel_order": "F (CaImAn: p = i + d1*j + d1*d2*k)",
                "source_files": _source_files(model),
                "parameters": params,
            }
        )
    }


def root_attrs(path: Path) -> dict[str, Any]:
    """The ``caiman_dask`` attributes of a store's root group (empty if it has none)."""
    try:
        g = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        raise StoreError(f"{path} is not a readable zarr group ({e})") from e
    attrs = g.attrs.get("caiman_dask", {})
    return dict(attrs) if isinstance(attrs, dict) else {}


def _open_or_create_group(path: Path, zarr_format: ZarrFormat, attrs: dict[str, Any]) -> Any:
    meta = path / ("zarr.json" if zarr_format == 3 else ".zgroup")
    if meta.exists():
        try:
            return zarr.open_group(str(path), mode="r+", zarr_format=zarr_format)
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            meta.unlink()  # metadata cut short by a kill: rewrite it (keep everything else)
    return zarr.create_group(str(path), zarr_format=zarr_format, attributes=attrs)


def _step(prog: Any, name: str, zarr_format: ZarrFormat, fn: Any) -> None:
    """Run ``fn`` unless the step is marked done; mark it done afterwards."""
    marks = _marker_array(prog, name, 1, zarr_format)
    if _done_units(marks)[0]:
        return
    fn()
    marks[0] = 1


def _step_done(prog: Any, name: str, zarr_format: ZarrFormat) -> bool:
    return bool(_done_units(_marker_array(prog, name, 1, zarr_format))[0])


def _marker_array(prog: Any, name: str, n: int, zarr_format: ZarrFormat) -> Any:
    try:
        arr = prog[name]
        if isinstance(arr, zarr.Array) and arr.shape == (n,):
            return arr
    except (KeyError, ValueError, OSError, json.JSONDecodeError):
        pass
    return prog.create_array(
        name, shape=(n,), chunks=(1,), dtype="uint8", fill_value=0, compressors=None, overwrite=True
    )


def _done_units(marks: Any) -> np.ndarray:
    out = np.zeros(marks.shape[0], bool)
    for i in range(marks.shape[0]):
        try:
            out[i] = bool(marks[i])
        except (ValueError, OSError, RuntimeError):
            out[i] = False  # a marker cut short by a kill: not done
    return out


def _all_written(*_: Any) -> None:
    """Joins the store tasks (their results are empty placeholders)."""


def _join(parts: Sequence[Any]) -> Any:
    """One Delayed depending on every write, built without graph optimisation, so data shared
    by the writes' graphs stays one key (and is scattered once on a cluster)."""
    name = f"caiman-dask-written-{tokenize(*[p.name for p in parts])}"
    keys = [k for p in parts for k in flatten(p.__dask_keys__())]
    graph = HighLevelGraph.from_collections(name, {name: (_all_written, *keys)}, parts)
    return Delayed(name, graph)


class _MarkedTarget:
    """A ``da.store`` target: writes one unit into the array, then marks it written."""

    def __init__(self, arr: Any, marks: Any, unit: int) -> None:
        self.arr = arr
        self.marks = marks
        self.unit = unit

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self.arr[key] = value
        self.marks[self.unit] = 1


def _shared_ring_units(built: Mapping[str, Any], unit: int, T: int) -> dict[str, da.Array]:
    """Write units of the CNMF-E ring movies exported together (``rcb``, ``residuals``): one
    graph whose blocks compute their background once for all of them (the same bytes as each
    movie's own blocks: a resumed export may mix the two)."""
    groups: dict[Any, list[tuple[str, Any]]] = {}
    for n, mv in built.items():
        if ring_coefficients(mv.description) is not None:
            groups.setdefault((np.dtype(mv.dtype).str, mv.time_chunks), []).append((n, mv))
    chunks = tuple([unit] * (T // unit) + ([T % unit] if T % unit else []))
    out: dict[str, da.Array] = {}
    for (_, time_chunks), members in groups.items():
        if len(members) < 2:
            continue
        # in the movies' own chunks (their blocks of Y, so their very frames), then the units
        descs = [mv.description for _, mv in members]
        stack = ring_movies_graph(descs, np.dtype(members[0][1].dtype), time_chunks)
        for j, (n, _) in enumerate(members):
            d = stack[j]
            out[n] = d if tuple(d.chunks[0]) == chunks else d.rechunk({0: chunks})
    return out


def _as_write_units(mv: Any, unit: int, dtype: np.dtype, T: int) -> da.Array:
    d = mv.data
    chunks = tuple([unit] * (T // unit) + ([T % unit] if T % unit else []))
    if tuple(d.chunks[0]) != chunks:
        d = d.rechunk({0: chunks})
    return d if d.dtype == dtype else d.astype(dtype)


def _movie_array(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunk_frames: int,
    shard_frames: int | None,
    comp: Any,
    zarr_format: ZarrFormat,
    model: CNMFModel,
    name: str,
) -> Any:
    axes, scale = _axes(len(shape) - 1, model.fr)
    grp = _open_or_create_group(path, zarr_format, _ome_attrs(name, axes, scale, zarr_format))
    if model.fr:
        _time_coordinate(grp, shape[0], float(model.fr), zarr_format)
    chunks = (chunk_frames, *shape[1:])
    try:
        arr = grp["0"]
        if (
            isinstance(arr, zarr.Array)
            and arr.shape == shape
            and arr.dtype == dtype
            and tuple(arr.chunks) == chunks
        ):
            return arr
    except (KeyError, ValueError, OSError, json.JSONDecodeError):
        pass
    kw: dict[str, Any] = {}
    if zarr_format == 3:
        kw["dimension_names"] = [a["name"] for a in axes]
        if shard_frames:
            kw["shards"] = (shard_frames, *shape[1:])
    else:  # xarray's dimension names on zarr v2; no fill value, which xarray would mask as NaN
        kw["attributes"] = {"_ARRAY_DIMENSIONS": [a["name"] for a in axes]}
    return grp.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=comp,
        fill_value=0 if zarr_format == 3 else None,
        overwrite=True,
        **kw,
    )


def _time_coordinate(grp: Any, T: int, fr: float, zarr_format: ZarrFormat) -> None:
    """The frame times in seconds, ``t / fr``, as the movie group's ``t`` array: the time
    coordinate ``xr.open_zarr(store, group=...)`` shows, as ``movie.to_xarray()`` has it."""
    kw: dict[str, Any] = {}
    if zarr_format == 3:
        kw["dimension_names"] = ["t"]
    else:
        kw["attributes"] = {"_ARRAY_DIMENSIONS": ["t"]}
    t = grp.create_array(
        "t",
        shape=(T,),
        chunks=(T,),
        dtype="float64",
        fill_value=None if zarr_format == 2 else 0.0,
        overwrite=True,
        **kw,
    )
    t[:] = np.arange(T, dtype=np.float64) / fr
    t.attrs.update({"units": "s", "long_name": "time"})


def _write_image(
    path: Path, img: np.ndarray, name: str, model: CNMFModel, zarr_format: ZarrFormat, comp: Any
) -> None:
    axes, scale = _axes(img.ndim, model.fr)
    axes, scale = axes[1:], scale[1:]
    grp = _open_or_create_group(path, zarr_format, _ome_attrs(name, axes, scale, zarr_format))
    kw: dict[str, Any] = {}
    if zarr_format == 3:
        kw["dimension_names"] = [a["name"] for a in axes]
    else:  # xarray's dimension names on zarr v2
        kw["attributes"] = {"_ARRAY_DIMENSIONS": [a["name"] for a in axes]}
    arr = grp.create_array(
        "0",
        shape=img.shape,
        chunks=img.shape,
        dtype=img.dtype,
        compressors=comp,
        fill_value=np.nan,
        overwrite=True,
        **kw,
    )
    arr[...] = img


def _write_factors(model: CNMFModel, path: Path, zarr_format: ZarrFormat, comp: Any) -> None:
    grp = _open_or_create_group(
        path / "factors",
        zarr_format,
        {
            "caiman_dask": {
                "pixel_order": "F",
                "dims": list(model.dims),
                "description": "CNMF factors; A and W are CSC triplets",
            }
        },
    )

    def dense(name: str, x: Any) -> None:
        if x is None:
            return
        # small factors: read here (never shipped inside a cluster graph)
        arr = np.asarray(x.compute(scheduler="sync") if isinstance(x, da.Array) else x)
        chunks = arr.shape if arr.ndim < 2 else (arr.shape[0], max(1, min(arr.shape[1], 4096)))
        a = grp.create_array(
            name,
            shape=arr.shape,
            chunks=tuple(max(1, c) for c in chunks),
            dtype=arr.dtype,
            compressors=comp,
            overwrite=True,
            fill_value=0,
        )
        a[...] = arr

    def csc(name: str, x: Any) -> None:
        if x is None:
            return
        m = _sparse_compute(x)
        g = _open_or_create_group(
            path / "factors" / name,
            zarr_format,
            {
                "format": "csc",
                "shape": list(m.shape),
                "pixel_order": "F" if name == "A" else "F (downsampled grid)",
            },
        )
        for part, arr in (
            ("data", m.data),
            ("indices", m.indices.astype(np.int32)),
            ("indptr", m.indptr.astype(np.int64)),
        ):
            a = g.create_array(
                part,
                shape=arr.shape,
                chunks=(max(1, min(arr.size, 2**20)),),
                dtype=arr.dtype,
                compressors=comp,
                overwrite=True,
                fill_value=0,
            )
            a[...] = arr

    csc("A", model.A)
    csc("W", model.W)
    for name in ("C", "b", "f", "b0", "YrA", "S", "F_dff"):
        dense(name, getattr(model, name))
    for name in ("idx_components", "idx_components_bad"):
        dense(name, getattr(model, name))
    dense("dims", np.asarray(model.dims, dtype=np.int64))
