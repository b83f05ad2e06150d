"""caiman_dask: lazy, exact, chunked views of CaImAn CNMF / CNMF-E results on dask."""

from __future__ import annotations

from ._accumulate import Accumulator, accumulate
from ._buffers import release_buffers
from ._compute import scheduler
from ._fastplotlib import to_fastplotlib
from ._io import MovieSource, open_movie, parse_memmap_name
from ._model import CNMFModel, from_arrays, open_cnmf
from ._movie import RCB, RCM, Movie, Raw, Residuals, raw, rcb, rcm, residuals
from ._napari import footprint_labels, to_napari
from ._nwb import to_nwb
from ._results import open_minian, open_nwb, open_suite2p
from ._statistics import KINDS, forget_statistics, project
from ._store import to_zarr
from ._store_read import describe_store, open_zarr, store_info
from ._summary import pnr_images
from ._synthetic import synthetic, write_cnmf_hdf5
from ._version import __version__
from ._view import (
    LiveLimits,
    Viewer,
    footprint_contours,
    render_frame,
    save_movie,
    view,
)
from .errors import (
    CaimanDaskError,
    CaimanDaskWarning,
    ComponentError,
    DenseMovieError,
    EmptyComponentsWarning,
    ExpressionError,
    FileChangedError,
    FileFormatError,
    FrameIndexError,
    MissingDependencyError,
    MissingFileError,
    ModelMismatchError,
    MovieExistsError,
    NaNWarning,
    OptionError,
    SchedulerError,
    ShapeMismatchError,
    StoreError,
    StoreLockedError,
    StoreWriteError,
)

__all__ = [
    "KINDS",
    "RCB",
    "RCM",
    "Accumulator",
    "CNMFModel",
    "CaimanDaskError",
    "CaimanDaskWarning",
    "ComponentError",
    "DenseMovieError",
    "EmptyComponentsWarning",
    "ExpressionError",
    "FileChangedError",
    "FileFormatError",
    "FrameIndexError",
    "LiveLimits",
    "MissingDependencyError",
    "MissingFileError",
    "ModelMismatchError",
    "Movie",
    "MovieExistsError",
    "MovieSource",
    "NaNWarning",
    "OptionError",
    "Raw",
    "Residuals",
    "SchedulerError",
    "ShapeMismatchError",
    "StoreError",
    "StoreLockedError",
    "StoreWriteError",
    "Viewer",
    "__version__",
    "accumulate",
    "describe_store",
    "footprint_contours",
    "footprint_labels",
    "forget_statistics",
    "from_arrays",
    "open_cnmf",
    "open_minian",
    "open_movie",
    "open_nwb",
    "open_suite2p",
    "open_zarr",
    "parse_memmap_name",
    "pnr_images",
    "project",
    "raw",
    "rcb",
    "rcm",
    "release_buffers",
    "render_frame",
    "residuals",
    "save_movie",
    "scheduler",
    "store_info",
    "synthetic",
    "to_fastplotlib",
    "to_napari",
    "to_nwb",
    "to_zarr",
    "view",
    "write_cnmf_hdf5",
]
