"""caiman_dask: lazy, exact, chunked views of CaImAn CNMF / CNMF-E results on dask."""

from __future__ import annotations

from ._buffers import release_buffers
from ._compute import scheduler
from ._io import MovieSource, open_movie, parse_memmap_name
from ._model import CNMFModel, from_arrays, open_cnmf
from ._movie import RCB, RCM, Movie, Raw, Residuals, raw, rcb, rcm, residuals
from ._statistics import KINDS, forget_statistics, project
from ._store import describe_store, open_zarr, store_info, to_zarr
from ._synthetic import synthetic, write_cnmf_hdf5
from ._version import __version__
from ._view import (
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
    EmptyComponentsWarning,
    ExpressionError,
    FileFormatError,
    FrameIndexError,
    MissingDependencyError,
    MissingFileError,
    ModelMismatchError,
    MovieExistsError,
    NaNWarning,
    OptionError,
    ShapeMismatchError,
    StoreError,
)

__all__ = [
    "KINDS",
    "RCB",
    "RCM",
    "CNMFModel",
    "CaimanDaskError",
    "CaimanDaskWarning",
    "ComponentError",
    "EmptyComponentsWarning",
    "ExpressionError",
    "FileFormatError",
    "FrameIndexError",
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
    "ShapeMismatchError",
    "StoreError",
    "Viewer",
    "__version__",
    "describe_store",
    "footprint_contours",
    "forget_statistics",
    "from_arrays",
    "open_cnmf",
    "open_movie",
    "open_zarr",
    "parse_memmap_name",
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
    "to_zarr",
    "view",
    "write_cnmf_hdf5",
]
