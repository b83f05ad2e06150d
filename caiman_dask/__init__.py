"""caiman_dask: lazy, exact, chunked views of CaImAn CNMF / CNMF-E results on dask."""

from __future__ import annotations

from ._buffers import release_buffers
from ._compute import scheduler
from ._io import MovieSource, open_movie, parse_memmap_name
from ._model import CNMFModel, from_arrays, open_cnmf
from ._movies import RCB, RCM, Movie, Raw, Residuals, raw, rcb, rcm, residuals
from ._projections import KINDS, project
from ._store import StoreError, describe_store, open_zarr, store_info, to_zarr
from ._synthetic import synthetic, write_cnmf_hdf5
from ._view import (
    MissingDependencyError,
    MovieExistsError,
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
    FileFormatError,
    NaNWarning,
    OptionError,
    ShapeMismatchError,
)

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "RCB",
    "RCM",
    "CNMFModel",
    "CaimanDaskError",
    "CaimanDaskWarning",
    "ComponentError",
    "EmptyComponentsWarning",
    "FileFormatError",
    "MissingDependencyError",
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
