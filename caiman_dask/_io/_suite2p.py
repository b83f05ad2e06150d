"""suite2p's plane folders: ``stat.npy``, traces, ``iscell.npy``, options and the registered movie.

suite2p (any version) writes one folder per plane with ``stat.npy`` (one dict per ROI:
``ypix``, ``xpix``, ``lam``, ``overlap``...), ``F.npy`` / ``Fneu.npy`` / ``spks.npy``
``(K, T)`` float32, ``iscell.npy`` ``(K, 2)`` (label, probability) and the registered movie
``data.bin``: raw int16, no header, frame-major ``(T, Ly, Lx)``. The options are in
``ops.npy`` (one flat dict before suite2p 1.0; 1.0 and later still write it as
``save_ops_orig``, with nested option groups) or, in suite2p >= 1.0, split into ``db.npy``
(the recording: ``Ly``, ``Lx``, ``nframes``...), ``settings.npy`` (the options) and
``reg_outputs.npy`` / ``detect_outputs.npy`` (``meanImg``, ``max_proj``, ``Vcorr``...).

This module only reads: arrays come back as NumPy / dask arrays; the model is built in
:mod:`caiman_dask._results`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..errors import FileFormatError, MissingFileError
from ._arrays import NumpyMemmapBackend, open_array
from ._backends import from_backend
from ._chunks import CHUNK_BYTES, default_frame_chunk, file_identity, time_chunks
from ._source import MovieSource

__all__ = ["open_suite2p_binary", "read_suite2p"]

_TRACES = ("F", "Fneu", "spks")


def _load_npy(path: Path, what: str, *, pickled: bool) -> Any:
    try:
        return np.load(path, allow_pickle=pickled, mmap_mode=None if pickled else "r")
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise FileFormatError(
            f"cannot read {what} {str(path)!r} ({type(e).__name__}: {e}); the file is truncated "
            "or not a NumPy .npy file. Copy it again from suite2p's output folder."
        ) from e


def _load_dict(path: Path) -> dict[str, Any]:
    obj = _load_npy(path, "suite2p options file", pickled=True)
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise FileFormatError(
            f"{path.name} in {str(path.parent)!r} holds a {type(obj).__name__}, not the dict "
            "suite2p saves there; is this a suite2p plane folder?"
        )
    return obj


def _options(folder: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The plane's options merged from ``ops.npy`` or ``db`` / ``settings`` / outputs."""
    files: dict[str, Path] = {}
    layout = [folder / n for n in ("db.npy", "settings.npy")]
    if all(p.exists() for p in layout):
        ops: dict[str, Any] = {}
        for name in ("db", "settings", "reg_outputs", "detect_outputs"):
            p = folder / f"{name}.npy"
            if p.exists():
                ops.update(_load_dict(p))
                files[name] = p
        return ops, files
    p = folder / "ops.npy"
    if p.exists():
        files["ops"] = p
        return _load_dict(p), files
    raise MissingFileError(
        f"suite2p folder {str(folder)!r} has neither ops.npy (suite2p < 1.0) nor db.npy + "
        "settings.npy (suite2p >= 1.0): the frame size and frame rate are in them. Pass the "
        "plane folder itself (e.g. 'suite2p/plane0')."
    )


def _int_option(ops: dict[str, Any], key: str, folder: Path) -> int:
    v = ops.get(key)
    try:
        out = int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        out = -1
    if out < 1:
        raise FileFormatError(
            f"suite2p options in {str(folder)!r} have {key}={v!r}; a positive integer is needed "
            "(suite2p records it in ops.npy / db.npy). The options file is damaged or foreign."
        )
    return out


def _overlap_option(ops: dict[str, Any]) -> bool:
    if "allow_overlap" in ops:  # suite2p < 1.0: flat options
        return bool(ops["allow_overlap"])
    ext = ops.get("extraction")
    if isinstance(ext, dict) and "allow_overlap" in ext:
        return bool(ext["allow_overlap"])
    return False  # suite2p's default in every version


def _trace(folder: Path, name: str, K: int, T: int | None) -> tuple[da.Array | None, int | None]:
    path = folder / f"{name}.npy"
    if not path.exists():
        return None, T
    arr = _load_npy(path, f"suite2p trace file {name}.npy", pickled=False)
    if arr.ndim != 2 or arr.shape[0] != K or (T is not None and arr.shape[1] != T):
        want = f"({K}, {'T' if T is None else T})"
        raise FileFormatError(
            f"{path.name} in {str(folder)!r} has shape {arr.shape} but {want} was expected (one "
            f"row per ROI of stat.npy, K={K}). The folder mixes files of different runs."
        )
    if arr.dtype.kind != "f" or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise FileFormatError(f"{path.name} in {str(folder)!r} is not a float array")
    backend = NumpyMemmapBackend(arr, path)
    tc = max(1, CHUNK_BYTES // max(1, K * 8))
    chunks = ((K,) if K else (0,), time_chunks(arr.shape[1], tc) or (0,))
    name_ = f"suite2p-{name}-{tokenize(file_identity(path))}"
    return from_backend(backend, chunks, name_), int(arr.shape[1])


def read_suite2p(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a suite2p plane folder: ROIs and options eagerly, traces lazily.

    Returns
    -------
    dict
        ``stat`` (list of dicts with int64 ``ypix``, ``xpix``, float ``lam``, bool
        ``overlap``), ``Ly``, ``Lx``, ``nframes``, ``fs`` (or ``None``), ``allow_overlap``,
        ``F``, ``Fneu``, ``spks`` (dask ``(K, T)`` or ``None``), ``iscell`` (``(K, 2)`` or
        ``None``), ``images`` (``meanImg``, ``meanImgE``, ``max_proj``, ``Vcorr`` where
        present), ``ops`` (the merged options), ``files`` (paths by role), ``data_bin`` (the
        registered movie's path or ``None``).

    Raises
    ------
    MissingFileError
        The folder, ``stat.npy``, ``F.npy`` or the options are missing.
    FileFormatError
        A file is damaged, a ROI lacks a key, pixels lie outside the frame, shapes disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(
            f"suite2p folder {str(folder)!r} does not exist or is not a folder; pass the plane "
            "folder suite2p wrote (e.g. 'suite2p/plane0')."
        )
    ops, files = _options(folder)
    stat_path = folder / "stat.npy"
    if not stat_path.exists():
        raise MissingFileError(
            f"suite2p folder {str(folder)!r} has no stat.npy (the ROIs); suite2p writes it after "
            "detection. Was detection run (settings['run']['do_detection'])?"
        )
    files["stat"] = stat_path
    stat_obj = _load_npy(stat_path, "suite2p ROI file stat.npy", pickled=True)
    stat = list(np.asarray(stat_obj, dtype=object).ravel())
    Ly = _int_option(ops, "Ly", folder)
    Lx = _int_option(ops, "Lx", folder)
    rois: list[dict[str, Any]] = []
    for k, s in enumerate(stat):
        if not isinstance(s, dict):
            raise FileFormatError(
                f"stat.npy in {str(folder)!r}: ROI {k} is a {type(s).__name__}, not a dict"
            )
        missing = [key for key in ("ypix", "xpix", "lam") if key not in s]
        if missing:
            raise FileFormatError(
                f"stat.npy in {str(folder)!r}: ROI {k} lacks {missing}; suite2p's ROIs carry "
                "'ypix', 'xpix' and 'lam'. The file was not written by suite2p's detection."
            )
        ypix = np.asarray(s["ypix"]).astype(np.int64).ravel()
        xpix = np.asarray(s["xpix"]).astype(np.int64).ravel()
        lam = np.asarray(s["lam"], dtype=np.float64).ravel()
        overlap = np.asarray(s.get("overlap", np.zeros(ypix.size, bool)), dtype=bool).ravel()
        if not (ypix.size == xpix.size == lam.size == overlap.size):
            raise FileFormatError(
                f"stat.npy in {str(folder)!r}: ROI {k} has {ypix.size} ypix, {xpix.size} xpix, "
                f"{lam.size} lam and {overlap.size} overlap entries; they must agree"
            )
        if ypix.size and (ypix.min() < 0 or xpix.min() < 0 or ypix.max() >= Ly or xpix.max() >= Lx):
            raise FileFormatError(
                f"stat.npy in {str(folder)!r}: ROI {k} has pixels outside the {Ly} x {Lx} frame "
                f"(ypix {ypix.min()}..{ypix.max()}, xpix {xpix.min()}..{xpix.max()}); the ROIs "
                "and the options come from different recordings."
            )
        rois.append({"ypix": ypix, "xpix": xpix, "lam": lam, "overlap": overlap})
    K = len(rois)
    if not (folder / "F.npy").exists():
        raise MissingFileError(
            f"suite2p folder {str(folder)!r} has no F.npy (the ROI traces, (K, T)); suite2p "
            "writes it after extraction."
        )
    out: dict[str, Any] = {"stat": rois, "Ly": Ly, "Lx": Lx, "ops": ops, "files": files}
    T: int | None = None
    for name in _TRACES:
        out[name], T = _trace(folder, name, K, T)
        if out[name] is not None:
            files[name] = folder / f"{name}.npy"
    assert T is not None  # F exists
    nframes = ops.get("nframes")
    if nframes is not None and int(nframes) != T:
        raise FileFormatError(
            f"F.npy in {str(folder)!r} has {T} frames but the options say nframes={nframes}; "
            "the folder mixes files of different runs."
        )
    out["nframes"] = T
    fs = ops.get("fs")
    out["fs"] = float(fs) if isinstance(fs, int | float) and fs > 0 else None
    out["allow_overlap"] = _overlap_option(ops)
    iscell_path = folder / "iscell.npy"
    out["iscell"] = None
    if iscell_path.exists():
        iscell = np.asarray(_load_npy(iscell_path, "suite2p file iscell.npy", pickled=False))
        if iscell.ndim == 1:
            iscell = np.column_stack([iscell, iscell])
        if iscell.ndim != 2 or iscell.shape[0] != K:
            raise FileFormatError(
                f"iscell.npy in {str(folder)!r} has shape {iscell.shape} but ({K}, 2) was "
                "expected (label, probability per ROI of stat.npy)"
            )
        out["iscell"] = np.asarray(iscell, dtype=np.float64)
        files["iscell"] = iscell_path
    out["images"] = {
        key: np.asarray(ops[key], dtype=np.float64)
        for key in ("meanImg", "meanImgE", "max_proj", "Vcorr")
        if isinstance(ops.get(key), np.ndarray)
    }
    data_bin = folder / "data.bin"
    out["data_bin"] = data_bin if data_bin.exists() else None
    return out


def open_suite2p_binary(
    path: str | os.PathLike[str], Ly: int, Lx: int, T: int, frame_chunk: int | None = None
) -> MovieSource:
    """suite2p's registered movie ``data.bin`` (int16, frame-major ``(T, Ly, Lx)``), lazily.

    Chunks read their own frames through a fresh memory map; ``movie[t]`` reads one frame.

    Raises
    ------
    MissingFileError, FileFormatError
        The file is missing, or its size is not ``2 * T * Ly * Lx`` bytes.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"suite2p movie {str(path)!r} does not exist")
    expected = 2 * T * Ly * Lx
    size = path.stat().st_size
    if size != expected:
        raise FileFormatError(
            f"suite2p movie {path.name} has {size:,} bytes but the options say T={T} frames of "
            f"{Ly} x {Lx} int16 pixels: 2 x {T} x {Ly * Lx} = {expected:,} bytes. The file is "
            "truncated or belongs to another run; pass movie= the matching data.bin."
        )
    arr = np.memmap(path, np.int16, "r", shape=(T, Ly, Lx))
    src = open_array(arr, frame_chunk or default_frame_chunk((Ly, Lx)))
    return replace(src, description=f"suite2p registered movie (int16) {path}")
