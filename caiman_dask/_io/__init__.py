"""Readers: CaImAn memmaps, TIFF, HDF5, zarr, NumPy and dask arrays, and ``cnmf.save()`` files.

Every reader returns a *movie source* (:class:`MovieSource`): the movie as a chunked dask array
``(T, *dims)`` whose chunks read only their own frames from the file, plus a direct, dask-free
frame reader used by the interactive fast path (``movie[t]``). File backends are small picklable
objects that hold a path, never the data, so graphs stay small and work unchanged on a
distributed cluster.

One module per job:

``_chunks``      time chunks and the file identity that names graphs
``_backends``    the picklable, lazily opened file backend base and ``from_backend``
``_source``      :class:`MovieSource`
``_memmap``      CaImAn memmaps (file-name fields, zero-copy views)
``_tiff``        TIFF movies
``_hdf5``        HDF5 movies (and opening HDF5 files with a clear error)
``_zarr``        zarr movies
``_arrays``      NumPy arrays and memmaps, dask arrays
``_open``        :func:`open_movie`, which picks one of the above
``_cnmf_hdf5``   CaImAn's ``cnmf.save()`` files (lazy factors, CSC column reads)
``_sparse``      sparse matrices as scipy CSC
``_suite2p``     suite2p's ``plane0`` folders (``stat``, ``F``, ``iscell``, settings, ``data.bin``)
``_minian``      minian's ``save_minian`` zarr stores
``_nwb``         NWB files: plane segmentations, ROI response series, images, the movie
"""

from __future__ import annotations

from ._chunks import check_frame_chunk, default_frame_chunk
from ._cnmf_hdf5 import CSCColumnsBackend, memmap_candidates, read_cnmf_hdf5
from ._memmap import parse_memmap_name
from ._open import open_movie
from ._source import MovieSource
from ._sparse import check_csc, sparse_to_scipy

__all__ = [
    "CSCColumnsBackend",
    "MovieSource",
    "check_csc",
    "check_frame_chunk",
    "default_frame_chunk",
    "memmap_candidates",
    "open_movie",
    "parse_memmap_name",
    "read_cnmf_hdf5",
    "sparse_to_scipy",
]
