"""``cd.to_nwb``: a model exported to a valid NWB file (pynwb / hdmf), streamed.

Layout (all under ``/processing/ophys`` unless said otherwise):

``ImageSegmentation/PlaneSegmentation``
    one row per component: ``pixel_mask`` (2D) or ``voxel_mask`` (3D) from the CSC
    footprints, read column block by column block; ``weight_float64`` (the same values in
    float64: the schema stores mask weights as float32), ``accepted`` and the per-component
    quality metrics the model carries (``SNR_comp``, ``r_values``, ``cnn_preds``,
    ``iscell_prob``...).
``ImageSegmentation/BackgroundPlaneSegmentation``
    the low-rank background ``b`` as ``nb`` background ROIs (``image_mask`` plus
    ``weight_float64``).
``Fluorescence/Denoised`` ``C``; ``Fluorescence/RoiResponseSeries`` ``C + YrA``;
``Fluorescence/Residual`` ``YrA``; ``Fluorescence/Deconvolved`` ``S``; ``DfOverF/DfOverF``
``F_dff``; ``Fluorescence/Background`` ``f``
    ``RoiResponseSeries`` of shape ``(T, K)``, written in time chunks from dask.
``RingModel`` (CNMF-E)
    a ``DynamicTable`` with one row per column of ``W`` (its non-zero ``indices`` and
    ``weights``, CSC, on the ``ssub_B``-downsampled grid, Fortran order), and ``b0`` as the
    image ``b0`` in ``BackgroundImages``.
``SummaryImages``
    exact projections: ``mean``, ``max``, ``std``, ``corr`` of ``Y``; ``rcm_max``,
    ``residuals_max``; and the frame-shaped images the model carries in ``extras``
    (suite2p's ``meanImg``, ``max_proj``, ``Vcorr``; CaImAn's ``Cn``).
``/acquisition/TwoPhotonSeries`` (``movie="write"`` or ``"link"``)
    the movie ``Y`` written in time chunks, or an external link to its file.

Axes: NWB names the pixel axes ``x, y(, z)``; caiman_dask writes a frame ``frame[i, j]``
with ``x = i`` (rows, ``d1``) and ``y = j`` (columns, ``d2``), as suite2p's own NWB export
does: ``TwoPhotonSeries.data`` is ``(T, d1, d2)``, ``image_mask`` is ``(n, d1, d2)`` and a
pixel mask entry ``(x, y, w)`` puts ``w`` at ``frame[x, y]``.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np

from ._compute import compute
from ._io import sparse_to_scipy
from ._model import CNMFModel
from ._movie import raw, rcm, residuals
from ._optional import require
from ._options import choose
from ._statistics import project
from .errors import MovieExistsError, OptionError

__all__ = ["MovieMode", "to_nwb"]

#: How :func:`to_nwb` stores the movie ``Y``.
MovieMode = Literal["write", "link"]

_TRACES = (
    ("C", "Fluorescence", "Denoised", "CaImAn's denoised traces C (the model's C)"),
    ("YrA+C", "Fluorescence", "RoiResponseSeries", "raw traces C + YrA (CaImAn's F)"),
    ("YrA", "Fluorescence", "Residual", "CaImAn's residual traces YrA (stored exactly)"),
    ("S", "Fluorescence", "Deconvolved", "deconvolved activity S"),
    ("F_dff", "DfOverF", "DfOverF", "ΔF/F (CaImAn's detrend_df_f)"),
)
_METRICS = {
    "SNR_comp": "CaImAn's SNR of the component's trace",
    "r_values": "CaImAn's spatial correlation of the footprint with the movie",
    "cnn_preds": "CaImAn's CNN classifier probability",
    "iscell_prob": "suite2p's classifier probability",
}


def _pixel_coords(rows: np.ndarray, dims: tuple[int, ...]) -> list[np.ndarray]:
    """CaImAn's Fortran pixel index ``p = i + d1*j (+ d1*d2*k)`` → ``[i, j(, k)]``."""
    out = []
    rest = rows.astype(np.int64)
    for d in dims:
        out.append((rest % d).astype(np.uint32))
        rest = rest // d
    return out


def _mask_columns(
    A: da.Array, dims: tuple[int, ...], hdmf_common: Any
) -> tuple[list[Any], np.ndarray]:
    """``pixel_mask`` / ``voxel_mask`` (+ ``weight_float64``) from the CSC footprints, read one
    column block at a time. Returns the hdmf columns and the per-column value counts."""
    names = ("x", "y", "z")[: len(dims)]
    rec_dtype = np.dtype([*((axis, np.uint32) for axis in names), ("weight", np.float32)])
    parts: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for j in range(A.numblocks[1]):
        block = sparse_to_scipy(A.blocks[0, j].compute(scheduler="sync")).tocsc()
        block.sort_indices()
        coords = _pixel_coords(block.indices, dims)
        rec = np.zeros(block.nnz, rec_dtype)
        for axis, c in zip(names, coords, strict=True):
            rec[axis] = c
        rec["weight"] = block.data
        parts.append(rec)
        weights.append(np.asarray(block.data, np.float64))
        counts.append(np.diff(block.indptr))
    col = "pixel_mask" if len(dims) == 2 else "voxel_mask"
    rec_all = np.concatenate(parts) if parts else np.zeros(0, rec_dtype)
    n = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    ends = np.cumsum(n).astype(np.uint64)
    mask = hdmf_common.VectorData(
        name=col,
        description=(
            "footprint pixels (x = row index i of frame[i, j], y = column index j"
            + (", z = plane index k" if len(dims) == 3 else "")
            + ") and weights, from the CSC footprints A"
        ),
        data=rec_all,
    )
    w = hdmf_common.VectorData(
        name="weight_float64",
        description=(
            f"the {col} weights in float64, entry for entry (the NWB schema stores mask weights "
            "as float32); read these for an exact A"
        ),
        data=np.concatenate(weights) if weights else np.zeros(0),
    )
    return [
        mask,
        hdmf_common.VectorIndex(name=f"{col}_index", data=ends, target=mask),
        w,
        hdmf_common.VectorIndex(name="weight_float64_index", data=ends.copy(), target=w),
    ], n


def _iterator_class(hdmf_iter: Any) -> Any:
    """A ``GenericDataChunkIterator`` over a dask array, one buffer per computed block."""

    class DaskChunkIterator(hdmf_iter.GenericDataChunkIterator):  # type: ignore[misc,name-defined]
        def __init__(self, x: da.Array, buffer_rows: int, progress: bool = False):
            self._x = x
            self._progress = progress
            shape = tuple(int(s) for s in x.shape)
            buffer = (max(1, min(buffer_rows, shape[0])), *shape[1:])
            chunk = (max(1, min(buffer[0], max(1, 2**20 // max(1, math.prod(shape[1:]))))),)
            super().__init__(
                buffer_shape=buffer,
                chunk_shape=(*chunk, *shape[1:]),
                display_progress=False,
            )

        def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
            return np.asarray(compute([self._x[selection]], self._progress)[0])

        def _get_maxshape(self) -> tuple[int, ...]:
            return tuple(int(s) for s in self._x.shape)

        def _get_dtype(self) -> np.dtype:
            return np.dtype(self._x.dtype)

    return DaskChunkIterator


def _metric_columns(model: CNMFModel, hdmf_common: Any) -> list[Any]:
    K = model.K
    cols = []
    accepted = np.ones(K, bool)
    if model.idx_components is not None:
        accepted[:] = False
        accepted[model.idx_components] = True
    elif model.idx_components_bad is not None:
        accepted[model.idx_components_bad] = False
    cols.append(
        hdmf_common.VectorData(
            name="accepted",
            description="accepted by the pipeline's evaluation (CaImAn idx_components, "
            "suite2p iscell); all true if it was never evaluated",
            data=accepted,
        )
    )
    for name, value in model.extras.items():
        if isinstance(value, da.Array) or name.startswith("weight"):
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub" or arr.shape != (K,):
            continue
        cols.append(
            hdmf_common.VectorData(
                name=name,
                description=_METRICS.get(name, f"per-component value {name!r} of the result"),
                data=arr.astype(np.float64) if arr.dtype.kind == "f" else arr,
            )
        )
    return cols


def _traces(model: CNMFModel, name: str) -> da.Array | None:
    if name == "YrA+C":
        return None if model.YrA is None else model.C + model.YrA
    x = getattr(model, name)
    return None if x is None else x


def to_nwb(
    model: CNMFModel,
    path: str | os.PathLike[str],
    *,
    images: bool = True,
    movie: MovieMode | None = None,
    overwrite: bool = False,
    fr: float | None = None,
    session_description: str = "calcium imaging result exported by caiman_dask",
    identifier: str | None = None,
    session_start_time: datetime | None = None,
    indicator: str = "unknown",
    location: str = "unknown",
    excitation_lambda: float = float("nan"),
    subject: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Write a model to an NWB file: segmentation, traces, background, images (and movie).

    Parameters
    ----------
    model
        Any model (``cd.open_cnmf``, ``cd.open_suite2p``, ``cd.from_arrays``...).
    path
        The ``.nwb`` file to write.
    images
        Write the exact projections as ``SummaryImages``: mean, max, std and corr of ``Y``
        (one streaming pass) and the max of the RCM and of the residuals (2D models; the
        ``Y`` images need a movie).
    movie
        ``None`` (no movie), ``"write"`` (``Y`` as ``/acquisition/TwoPhotonSeries``, written
        in time chunks) or ``"link"`` (a ``TwoPhotonSeries`` whose ``external_file`` is the
        movie's file, relative to the NWB file).
    overwrite
        Replace an existing file.
    fr
        Frame rate in Hz (default: the model's ``fr``; one of them is needed).
    session_description, identifier, session_start_time, indicator, location, excitation_lambda
        NWB metadata (``identifier`` defaults to a new UUID, ``session_start_time`` to the
        modification time of the result file, else now).
    subject
        Keyword arguments of ``pynwb.file.Subject`` (``subject_id``, ``species``, ``sex``,
        ``age``...); default: ``subject_id="unknown"``, ``sex="U"`` and a description saying
        it was not recorded; nwbinspector then reports the missing age (CRITICAL) and species,
        which only you know: pass them for a file DANDI accepts.
    metadata
        Further keyword arguments of ``pynwb.NWBFile`` (``experimenter``, ``lab``,
        ``institution``, ``experiment_description``, ``keywords``, ``session_id``...).
    progress
        Show dask's progress bar for the streamed parts that take over a second (the
        projections' pass, each buffer of the movie and of the traces). Ctrl-C interrupts the
        export and removes the partial file.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    MissingDependencyError
        pynwb is not installed (``pip install "caiman-dask[nwb]"``).
    MovieExistsError
        ``path`` exists and ``overwrite`` is false.
    OptionError
        An unknown ``movie`` mode, no frame rate, ``movie`` without a movie in the model.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.open_cnmf("cnmf.hdf5")  # doctest: +SKIP
    >>> cd.to_nwb(m, "session.nwb", movie="write",
    ...           subject={"subject_id": "m1", "species": "Mus musculus", "sex": "F",
    ...                    "age": "P90D"})  # doctest: +SKIP
    PosixPath('session.nwb')
    """
    pynwb = require("pynwb", "cd.to_nwb")
    hdmf_common = require("hdmf.common", "cd.to_nwb")
    hdmf_iter = require("hdmf.data_utils", "cd.to_nwb")
    ophys = pynwb.ophys
    path = Path(path)
    mode = None if movie is None else choose("movie", movie, ("write", "link"))
    if path.exists() and not overwrite:
        raise MovieExistsError(
            f"path={str(path)!r} exists; pass overwrite=True to replace it, or another path"
        )
    rate = fr if fr is not None else model.fr
    if rate is None or not np.isfinite(rate) or rate <= 0:
        raise OptionError(
            f"fr={rate!r}: NWB time series need a positive frame rate and the model has none; "
            "pass fr=<frames per second> to cd.to_nwb."
        )
    if mode is not None and model.Y is None:
        raise OptionError(
            f"movie={mode!r} but the model has no movie Y; open the result with its movie "
            "(movie= of cd.open_cnmf / cd.open_suite2p) or pass movie=None."
        )
    dims = model.dims
    T, K = model.T, model.K
    start = session_start_time
    if start is None:
        src = next(iter(model.files.values()), None)
        start = (
            datetime.fromtimestamp(src.stat().st_mtime, tz=UTC)
            if src is not None and Path(src).exists()
            else datetime.now(UTC)
        )
    nwb = pynwb.NWBFile(
        session_description=session_description,
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=start,
        source_script="caiman_dask.to_nwb",
        source_script_file_name="caiman_dask/_nwb.py",
        subject=pynwb.file.Subject(
            **(
                subject
                if subject is not None
                else {
                    "subject_id": "unknown",
                    "sex": "U",
                    "description": "not recorded by the pipeline; pass subject= to cd.to_nwb",
                }
            )
        ),
        **dict(metadata or {}),
    )
    device = nwb.create_device(name="Microscope", description="imaging device (not recorded)")
    channel = ophys.OpticalChannel(
        name="OpticalChannel", description="imaging channel", emission_lambda=float("nan")
    )
    plane = nwb.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=channel,
        imaging_rate=float(rate),
        description=f"frames of {' x '.join(map(str, dims))} pixels (x = rows, y = columns)",
        device=device,
        excitation_lambda=excitation_lambda,
        indicator=indicator,
        location=location,
    )
    Iter = _iterator_class(hdmf_iter)
    buffer_frames = max(1, (64 * 2**20) // max(1, math.prod(dims) * 8))
    series = None
    if mode == "write" and model.Y is not None:
        series = ophys.TwoPhotonSeries(
            name="TwoPhotonSeries",
            description="the movie Y the model was fitted on, frames (T, x, y)",
            data=Iter(model.Y, buffer_frames, progress=progress),
            imaging_plane=plane,
            rate=float(rate),
            unit="n.a.",
            dimension=list(dims),
        )
        nwb.add_acquisition(series)
    elif mode == "link":
        files = [p for k, p in model.files.items() if k == "movie"]
        if not files:
            raise OptionError(
                "movie='link' needs the movie's file, but the model's movie is an in-memory "
                "array; use movie='write'."
            )
        rel = os.path.relpath(Path(files[0]).resolve(), path.resolve().parent)
        series = ophys.TwoPhotonSeries(
            name="TwoPhotonSeries",
            description=f"the movie Y, stored outside this file ({Path(files[0]).name})",
            external_file=[rel],
            starting_frame=[0],
            format="external",
            num_samples=T,
            imaging_plane=plane,
            rate=float(rate),
            unit="n.a.",
            dimension=list(dims),
        )
        nwb.add_acquisition(series)
    mod = nwb.create_processing_module(
        "ophys", "optical physiology: footprints, traces, background and exact images"
    )
    seg = ophys.ImageSegmentation(name="ImageSegmentation")
    mod.add(seg)
    mask_cols, _ = _mask_columns(model.A, dims, hdmf_common)
    ps = ophys.PlaneSegmentation(
        name="PlaneSegmentation",
        description=f"{K} components (footprints A, Fortran pixel order p = i + d1*j read as "
        "x = i, y = j)",
        imaging_plane=plane,
        id=np.arange(K),
        columns=[*mask_cols, *_metric_columns(model, hdmf_common)],
        **({"reference_images": series} if series is not None else {}),
    )
    seg.add_plane_segmentation(ps)
    fluo = ophys.Fluorescence(name="Fluorescence")
    dff = ophys.DfOverF(name="DfOverF")
    trace_rows = max(1, (64 * 2**20) // max(1, K * 8))
    region = ps.create_roi_table_region(description="all components", region=list(range(K)))
    pending: list[tuple[Any, Any]] = []
    for key, container, name, desc in _TRACES:
        x = _traces(model, key)
        if x is None:
            continue
        rrs = ophys.RoiResponseSeries(
            name=name,
            description=desc,
            data=Iter(x.T, trace_rows, progress=progress),
            rois=region,
            unit="n.a.",
            rate=float(rate),
        )
        pending.append((fluo if container == "Fluorescence" else dff, rrs))
    if model.b is not None and model.f is not None:
        pending.append(
            (
                fluo,
                _background(
                    model, seg, plane, hdmf_common, ophys, Iter, rate, trace_rows, progress
                ),
            )
        )
    for container in (fluo, dff):  # in the file before its series (their ROI links resolve)
        if any(c is container for c, _ in pending):
            mod.add(container)
    for container, rrs in pending:
        container.add_roi_response_series(rrs)
    image_list: list[Any] = []
    if model.W is not None and model.b0 is not None:
        mod.add(_ring_table(model, hdmf_common))
        b0 = np.asarray(model.b0.compute(scheduler="sync")).reshape(dims, order="F")  # own dtype
        if len(dims) == 2:
            mod.add(
                pynwb.base.Images(
                    name="BackgroundImages",
                    images=[
                        pynwb.image.GrayscaleImage(
                            name="b0", data=b0, description="CNMF-E's constant background b0"
                        )
                    ],
                    description="CNMF-E ring-model background: b0 (frame-shaped, x = rows)",
                )
            )
    if images and len(dims) == 2:
        image_list = _images(model, pynwb, progress)
        if image_list:
            mod.add(
                pynwb.base.Images(
                    name="SummaryImages",
                    images=image_list,
                    description="exact projections over time (caiman_dask's cd.project)",
                )
            )
    tmp = path.with_name(f".{path.stem}.partial.nwb")
    try:  # write beside, then rename: an interrupted export (Ctrl-C) leaves no half file
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _background(
    model: CNMFModel,
    seg: Any,
    plane: Any,
    hdmf_common: Any,
    ophys: Any,
    Iter: Any,
    rate: float,
    trace_rows: int,
    progress: bool,
) -> Any:
    """The low-rank background as background ROIs; returns its RoiResponseSeries ``f``."""
    assert model.b is not None and model.f is not None
    dims = model.dims
    b = np.asarray(model.b.compute(scheduler="sync"), np.float64)
    nb = b.shape[1]
    masks = np.stack([b[:, i].reshape(dims, order="F") for i in range(nb)])
    flat = hdmf_common.VectorData(
        name="weight_float64",
        description="the background footprints b in float64, column by column, in CaImAn's "
        "Fortran pixel order (p = i + d1*j); image_mask holds the same values as float32",
        data=b.T.ravel(),
    )
    index = hdmf_common.VectorIndex(
        name="weight_float64_index",
        data=np.arange(1, nb + 1, dtype=np.uint64) * b.shape[0],
        target=flat,
    )
    image_col = "image_mask"
    bps = ophys.PlaneSegmentation(
        name="BackgroundPlaneSegmentation",
        description=f"low-rank background b (nb={nb}) as background ROIs",
        imaging_plane=plane,
        id=np.arange(nb),
        columns=[
            hdmf_common.VectorData(
                name=image_col, description="background footprint (x = rows)", data=masks
            ),
            flat,
            index,
        ],
    )
    seg.add_plane_segmentation(bps)
    region = bps.create_roi_table_region(description="background", region=list(range(nb)))
    return ophys.RoiResponseSeries(
        name="Background",
        description="low-rank background traces f",
        data=Iter(model.f.T, trace_rows, progress=progress),
        rois=region,
        unit="n.a.",
        rate=float(rate),
    )


def _ring_table(model: CNMFModel, hdmf_common: Any) -> Any:
    assert model.W is not None
    W = sparse_to_scipy(model.W.compute(scheduler="sync")).tocsc()
    W.sort_indices()
    ind = hdmf_common.VectorData(
        name="indices", description="row indices of the non-zeros of this column", data=W.indices
    )
    wts = hdmf_common.VectorData(
        name="weights", description="values of the non-zeros of this column", data=W.data
    )
    ends = W.indptr[1:].astype(np.uint64)
    ssub = model.extras.get("ssub_B")
    return hdmf_common.DynamicTable(
        name="RingModel",
        description=(
            f"CNMF-E ring-model weights W, shape {W.shape}, as CSC: row k holds column k's "
            "non-zeros (indices, weights). Pixels are CaImAn's Fortran order on the grid "
            f"downsampled by ssub_B={ssub} in every axis. The background of frame t is "
            "b0 + U(W·(D·Y_t − D·A·C_t − D·b0)) (D averages ssub_B blocks, U repeats back)."
        ),
        id=np.arange(W.shape[1]),
        columns=[
            ind,
            hdmf_common.VectorIndex(name="indices_index", data=ends, target=ind),
            wts,
            hdmf_common.VectorIndex(name="weights_index", data=ends.copy(), target=wts),
        ],
    )


def _images(model: CNMFModel, pynwb: Any, progress: bool) -> list[Any]:
    out: dict[str, np.ndarray] = {}
    desc = {
        "mean": "mean of Y over time",
        "max": "max of Y over time",
        "std": "standard deviation of Y over time (ddof=0)",
        "corr": "CaImAn's local correlation image of Y",
        "rcm_max": "max over time of the reconstructed movie A·C (exact)",
        "residuals_max": "max over time of the residuals Y − A·C − B (exact)",
    }
    if model.Y is not None:
        out.update(project(raw(model), ["mean", "max", "std", "corr"], progress=progress))
        out["residuals_max"] = project(residuals(model), "max", progress=progress)
    out["rcm_max"] = project(rcm(model), "max", progress=progress)
    for key, value in model.extras.items():  # the source pipeline's images (meanImg, Cn...)
        if key in out or isinstance(value, da.Array):
            continue
        arr = np.asarray(value)
        if arr.shape == model.dims and arr.dtype.kind in "fiu":
            out[key] = arr
            desc[key] = f"image {key!r} saved by the source pipeline (x = rows)"
    return [
        pynwb.image.GrayscaleImage(name=k, data=np.asarray(v, np.float64), description=desc[k])
        for k, v in out.items()
    ]
