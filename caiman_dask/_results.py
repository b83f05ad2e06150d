"""Results of other pipelines as models: suite2p, minian and NWB files.

Every source of the form ``Y ≈ A·C (+ background)`` becomes a :class:`~caiman_dask.CNMFModel`
(built with :func:`~caiman_dask._model.from_arrays`), so ``cd.rcm``, ``cd.residuals``,
``cd.project``, ``cd.to_zarr`` and ``cd.to_nwb`` work on it unchanged. The file formats are
read by ``_io/_suite2p.py``, ``_io/_minian.py`` and ``_io/_nwb.py``; this module only turns
their arrays into a model (footprints in CaImAn's Fortran pixel order, traces ``(K, T)``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from ._io import open_movie
from ._io._minian import read_minian
from ._io._nwb import open_nwb_movie, read_nwb
from ._io._suite2p import open_suite2p_binary, read_suite2p
from ._model import CNMFModel, from_arrays
from .errors import MissingFileError

__all__ = ["open_minian", "open_nwb", "open_suite2p", "suite2p_footprints"]


# ------------------------------------------------------------------------------------------
# suite2p
# ------------------------------------------------------------------------------------------


def suite2p_footprints(
    stat: Sequence[dict[str, Any]], Ly: int, Lx: int, *, allow_overlap: bool = False
) -> scipy.sparse.csc_matrix:
    """The masks suite2p's extraction uses, as CSC footprints ``(Ly*Lx, K)`` in Fortran order.

    Column ``k`` holds ROI ``k``'s ``lam`` on its pixels ``(ypix, xpix)`` (row
    ``ypix + Ly*xpix``), without the pixels flagged in ``overlap`` unless ``allow_overlap``,
    divided by the sum of what is left: suite2p's extraction weights, so that
    ``F[k] = A[:, k]ᵀ · Y``. A ROI whose pixels all overlap gives a zero column.
    """
    rows: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    counts = np.zeros(len(stat), dtype=np.int64)
    for k, s in enumerate(stat):
        keep = np.ones(s["ypix"].size, bool) if allow_overlap else ~s["overlap"]
        lam = s["lam"][keep]
        total = lam.sum()
        if lam.size == 0 or total == 0:
            continue
        rows.append(s["ypix"][keep] + Ly * s["xpix"][keep])
        vals.append(lam / total)
        counts[k] = lam.size
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    data = np.concatenate(vals) if vals else np.zeros(0)
    A = scipy.sparse.csc_matrix((data, indices, indptr), shape=(Ly * Lx, len(stat)))
    A.sum_duplicates()
    return A


def _solve_block(block: np.ndarray, gram: scipy.sparse.csc_matrix) -> np.ndarray:
    """``G⁻¹ · block`` for a ``(K, t)`` block of traces (``G`` sparse, symmetric)."""
    if block.shape[1] == 0:
        return np.zeros(block.shape, np.float64)
    out = scipy.sparse.linalg.spsolve(gram, np.asarray(block, np.float64))
    return np.asarray(out, np.float64).reshape(block.shape)


def _least_squares_traces(A: scipy.sparse.csc_matrix, F: da.Array) -> da.Array:
    """``C = (AᵀA)⁺ · F``: the coefficients of the least-squares fit of ``Y`` by ``A``, given
    ``F = AᵀY``. Empty columns of ``A`` get zero traces."""
    gram = (A.T @ A).tocsc()
    norms = gram.diagonal()
    empty = norms == 0
    off = gram - scipy.sparse.diags(norms)
    off.eliminate_zeros()
    if off.nnz == 0:  # disjoint masks (suite2p's default): a per-row scale
        scale = np.where(empty, 0.0, 1.0 / np.where(empty, 1.0, norms))
        return F.astype(np.float64) * scale[:, None]
    gram = (gram + scipy.sparse.diags(empty.astype(np.float64))).tocsc()
    keep = (~empty).astype(np.float64)[:, None]
    C = F.rechunk({0: -1}).map_blocks(_solve_block, gram, dtype=np.float64)
    return C * keep


def open_suite2p(
    folder: str | os.PathLike[str],
    *,
    movie: Any = "data.bin",
    allow_overlap: bool | None = None,
    frame_chunk: int | None = None,
) -> CNMFModel:
    r"""Open a suite2p plane folder lazily as a model: ``Y ≈ A·C``.

    Parameters
    ----------
    folder
        The plane folder suite2p wrote (``suite2p/plane0``): ``stat.npy``, ``F.npy``,
        ``iscell.npy``, the options (``db.npy`` + ``settings.npy`` of suite2p >= 1.0, or
        ``ops.npy``) and, normally, the registered movie ``data.bin``.
    movie
        The movie ``Y``: ``"data.bin"`` (default; suite2p's registered int16 movie in the
        folder, frame-major ``(T, Ly, Lx)``, read lazily frame by frame; no movie if the file
        is absent), ``None`` for none, or any path / array :func:`caiman_dask.open_movie`
        takes.
    allow_overlap
        Whether overlapping pixels belong to the masks; default: what suite2p's extraction
        used (its ``allow_overlap`` option, ``False`` unless changed).
    frame_chunk
        Frames per dask chunk of the movie.

    Returns
    -------
    CNMFModel
        ``A`` the extraction masks, ``C`` the rescaled ``F`` (see below), ``S`` ``spks``
        rescaled alike, ``idx_components`` / ``idx_components_bad`` from ``iscell``,
        ``fr = fs``, ``extras``: ``iscell_prob`` (the classifier's probability), ``meanImg``
        (and ``meanImgE``, ``max_proj``, ``Vcorr`` where saved; ``(Ly, Lx)`` images),
        ``allow_overlap`` and ``Fneu`` (the neuropil traces, lazy, unscaled).

    Notes
    -----
    **What suite2p's extraction computes.** For ROI ``k`` suite2p keeps the pixels of
    ``stat[k]`` that no other ROI claims (``overlap`` is false; all of them if
    ``allow_overlap``) and weights them by ``lam`` divided by the sum of the kept ``lam``:
    a mask ``w_k`` with ``Σ_p w_kp = 1``. Its trace is the weighted mean
    ``F[k, t] = w_kᵀ Y[:, t]``, i.e. ``F = Wᵀ Y``. Overlapping pixels are thrown out of
    every ROI that shares them, so (by default) the masks have disjoint supports.

    **Which ``A·C`` that implies.** Take the footprints ``A = W`` (the masks suite2p
    applied). The least-squares reconstruction of ``Y`` from them,
    ``min_C ‖Y − A C‖²``, has ``C = (AᵀA)⁻¹ AᵀY = (AᵀA)⁻¹ F`` — computable from ``F``
    alone, without ``Y``. With disjoint masks ``AᵀA`` is diagonal, so

        ``C[k] = F[k] / ‖w_k‖²``,  ``‖w_k‖² = Σ_p w_kp²``,

    and ``A·C`` is the orthogonal projection of each frame onto the masks' span: inside ROI
    ``k`` the frame is replaced by ``w_k · (w_kᵀy) / ‖w_k‖²``, outside every mask it is zero,
    and ``Aᵀ(Y − A·C) = 0`` (the residual carries nothing the masks see). With
    ``allow_overlap`` the masks overlap and ``C = (AᵀA)⁻¹F`` is solved exactly per time
    chunk with the sparse ``K × K`` Gram matrix. A ROI with no pixel left (all overlapping)
    has a zero footprint and a zero trace. ``F`` is raw ROI fluorescence (not
    neuropil-corrected); ``Fneu`` is in ``extras``.

    Raises
    ------
    MissingFileError
        No folder, no ``stat.npy`` / ``F.npy``, no options file, or an explicit movie path that
        does not exist.
    FileFormatError
        A damaged file, a ROI without ``ypix`` / ``xpix`` / ``lam``, ROI pixels outside the
        frame, traces or ``iscell`` whose shape disagrees with ``stat``, a ``data.bin`` whose
        size disagrees with the options.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.open_suite2p("tests/data/suite2p/plane0")  # doctest: +SKIP
    >>> cd.rcm(m, "good")[10]  # doctest: +SKIP
    """
    folder = Path(folder)
    r = read_suite2p(folder)
    Ly, Lx, T = r["Ly"], r["Lx"], r["nframes"]
    overlap = r["allow_overlap"] if allow_overlap is None else bool(allow_overlap)
    A = suite2p_footprints(r["stat"], Ly, Lx, allow_overlap=overlap)
    C = _least_squares_traces(A, r["F"])
    S = None if r["spks"] is None else _least_squares_traces(A, r["spks"])
    Y: Any = None
    if isinstance(movie, str) and movie == "data.bin":
        if r["data_bin"] is not None:
            Y = open_suite2p_binary(r["data_bin"], Ly, Lx, T, frame_chunk)
    elif movie is not None:
        Y = movie
    good = bad = None
    extras: dict[str, Any] = {"allow_overlap": overlap, **r["images"]}
    if r["iscell"] is not None:
        label = r["iscell"][:, 0] > 0.5
        good, bad = np.flatnonzero(label), np.flatnonzero(~label)
        extras["iscell_prob"] = r["iscell"][:, 1]
    if r["Fneu"] is not None:
        extras["Fneu"] = r["Fneu"]
    model = from_arrays(
        A,
        C,
        dims=(Ly, Lx),
        Y=Y,
        S=S,
        idx_components=good,
        idx_components_bad=bad,
        fr=r["fs"],
        frame_chunk=frame_chunk,
        extras=extras,
    )
    files = {**{f"suite2p_{k}": v for k, v in r["files"].items()}, **model.files}
    return dataclasses.replace(model, files=files)


# ------------------------------------------------------------------------------------------
# NWB
# ------------------------------------------------------------------------------------------


def open_nwb(
    path: str | os.PathLike[str],
    *,
    movie: Any = "auto",
    segmentation: str | None = None,
    dims: Sequence[int] | None = None,
    frame_chunk: int | None = None,
) -> CNMFModel:
    """Open an NWB file's ROIs and traces lazily as a model: ``Y ≈ A·C (+ background)``.

    Reads what :func:`caiman_dask.to_nwb` writes (exactly: the float64 mask weights, the
    background ROIs, the ring model, the accepted flags and metrics) and what suite2p's NWB
    export and roiextractors / neuroconv write for CaImAn and suite2p results.

    Parameters
    ----------
    path
        The ``.nwb`` file (HDF5). Opened read-only.
    movie
        ``"auto"`` (default): the file's ``TwoPhotonSeries`` / ``OnePhotonSeries`` data, read
        lazily in time chunks, or its external file when the series links one; ``None`` for
        none; or any path / array :func:`caiman_dask.open_movie` takes.
    segmentation
        Which ``PlaneSegmentation`` holds the ROIs (its path or name); default: the first one
        whose name does not say background.
    dims
        The frame shape, when the file does not say it (pixel masks without a movie).
    frame_chunk
        Frames per dask chunk of the movie.

    Returns
    -------
    CNMFModel
        ``A`` from ``pixel_mask`` / ``voxel_mask`` / ``image_mask`` (``x`` = rows ``i``,
        ``y`` = columns ``j``; rows of ``A`` in CaImAn's Fortran order); ``C`` from the
        ``Denoised`` series (CaImAn's C, as roiextractors and ``cd.to_nwb`` name it), else
        the ``RoiResponseSeries`` / raw fluorescence as stored; ``YrA`` from ``Residual``
        (``cd.to_nwb``), else raw − denoised when both are there; ``S`` from
        ``Deconvolved``; ``F_dff`` from ``DfOverF``; ``b`` / ``f`` from a background plane
        segmentation and its series; ``W`` / ``b0`` from ``cd.to_nwb``'s ring model;
        ``idx_components`` from ``accepted`` (or roiextractors' ``is_accepted`` /
        ``iscell``); other numeric per-ROI columns, ``Fneu`` (``Neuropil``) and the
        file's frame-shaped images (``mean``, ``corr``, ``meanImg``...) in ``extras``.

    Raises
    ------
    MissingFileError
        The file (or a movie path given) does not exist.
    FileFormatError
        Not HDF5, no plane segmentation, no masks, no traces, traces whose ROI count
        disagrees with the masks, masks outside the frame.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.open_nwb("session.nwb")  # doctest: +SKIP
    >>> cd.rcm(m, "good")[100]  # doctest: +SKIP
    """
    path = Path(path)
    r = read_nwb(path, segmentation=segmentation, dims=None if dims is None else tuple(dims))
    traces = r["traces"]
    C = traces.get("C", traces.get("raw", traces.get("F_dff")))
    YrA = traces.get("YrA")
    if YrA is None and "C" in traces and "raw" in traces:
        YrA = traces["raw"] - traces["C"]
    A = r["A"]
    if r["A_float32"] and C is not None and C.dtype == np.float32:
        A = A.astype(np.float32)
    Y: Any = None
    if isinstance(movie, str) and movie == "auto":
        if r["movie"] is not None:
            Y = open_nwb_movie(path, r["movie"], frame_chunk)
        elif r["external"] is not None and Path(r["external"]).is_file():
            Y = r["external"]
    elif movie is not None:
        Y = movie
    good = bad = None
    if r["accepted"] is not None:
        good, bad = np.flatnonzero(r["accepted"]), np.flatnonzero(~r["accepted"])
    extras: dict[str, Any] = {**r["images"], **r["columns"]}
    if "Fneu" in traces:
        extras["Fneu"] = traces["Fneu"]
    b, f = r["b"], r["f"]
    model = from_arrays(
        A,
        C,
        dims=r["dims"],
        Y=Y,
        b=b,
        f=f,
        W=r["W"],
        b0=r["b0"],
        YrA=YrA,
        S=traces.get("S"),
        F_dff=traces.get("F_dff") if C is not traces.get("F_dff") else None,
        idx_components=good,
        idx_components_bad=bad,
        fr=r["fr"],
        frame_chunk=frame_chunk,
        extras=extras,
    )
    return dataclasses.replace(model, files={"nwb": path, **model.files})


# ------------------------------------------------------------------------------------------
# minian
# ------------------------------------------------------------------------------------------


def open_minian(
    folder: str | os.PathLike[str],
    *,
    movie: Any = None,
    baseline: bool = True,
    fr: float | None = None,
    frame_chunk: int | None = None,
) -> CNMFModel:
    """Open a minian result (the zarr stores of ``save_minian``) lazily as a model.

    minian's CNMF fits ``Y ≈ A·(C + b0 + c0) + b·f``: footprints ``A (unit_id, height,
    width)`` (dense in the store; read into sparse chunks of units), calcium traces ``C``,
    a per-unit baseline ``b0`` and initial decay ``c0`` (``(unit_id, frame)``), and a
    one-component background ``b (height, width)``, ``f (frame,)``.

    Parameters
    ----------
    folder
        The folder ``save_minian`` wrote to (``A.zarr``, ``C.zarr``, and where saved ``S``,
        ``b0``, ``c0``, ``b``, ``f``).
    movie
        The movie the model was fitted on: the name of a minian movie store in the folder
        (``"Y_fm_chk"``, ``"Y_hw_chk"``, ``"varr"``...), a ``<name>.zarr`` path, or any path /
        array :func:`caiman_dask.open_movie` takes; ``None`` for none.
    baseline
        ``True`` (default): the model's traces are ``C + b0 + c0`` (the whole temporal fit, so
        residuals are ``Y`` minus minian's full model); ``False``: ``C`` alone, so ``cd.rcm``
        is minian's own ``AC``.
    fr
        Frame rate in Hz (minian does not store it).
    frame_chunk
        Frames per dask chunk of the movie.

    Returns
    -------
    CNMFModel
        ``extras["unit_id"]`` holds minian's unit ids (column ``k`` of ``A`` is unit
        ``unit_id[k]``, in ``C``'s order).

    Raises
    ------
    MissingFileError
        No folder, no ``A.zarr`` / ``C.zarr``, a movie name or path that does not exist.
    FileFormatError
        A store that is not minian's, dimensions or unit ids that disagree.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.open_minian("tests/data/minian", movie="Y_fm_chk", fr=20.0)  # doctest: +SKIP
    >>> cd.residuals(m)[0].shape  # doctest: +SKIP
    (30, 38)
    """
    folder = Path(folder)
    r = read_minian(folder)
    C = r["C"]
    if baseline:
        for extra in ("b0", "c0"):
            if r[extra] is not None:
                C = C.astype(np.float64) + r[extra]
    Y: Any = None
    if movie is not None:
        Y = _minian_movie(folder, movie, frame_chunk)
    model = from_arrays(
        r["A"],
        C,
        dims=r["dims"],
        Y=Y,
        b=r["b"],
        f=r["f"],
        S=r["S"],
        fr=fr,
        frame_chunk=frame_chunk,
        extras={"unit_id": r["unit_id"], "baseline_included": bool(baseline)},
    )
    files = {**{f"minian_{k}": v for k, v in r["files"].items()}, **model.files}
    return dataclasses.replace(model, files=files)


def _minian_movie(folder: Path, movie: Any, frame_chunk: int | None) -> Any:
    if isinstance(movie, str) and not movie.endswith(".zarr") and os.sep not in movie:
        store = folder / f"{movie}.zarr"
        if not store.exists():
            have = sorted(p.stem for p in folder.glob("*.zarr"))
            raise MissingFileError(
                f"movie={movie!r}: minian folder {str(folder)!r} has no {movie}.zarr (its "
                f"stores: {have}); pass the name of the movie store minian saved, or a path."
            )
        movie = store
    if isinstance(movie, str | os.PathLike):
        p = Path(movie)
        if p.suffix == ".zarr" and (p / p.stem).exists():  # an xarray dataset of save_minian
            return open_movie(p, key=p.stem, frame_chunk=frame_chunk)
    return movie
