"""CaImAn memmaps: the file name's fields, and the movie as zero-copy views of the file.

Pixel order: CaImAn flattens pixels in Fortran order (``p = i + d1*j + d1*d2*k``). Movies come out
frames-first with C-contiguous semantics, ``frame[i, j] = Yr[i + d1*j, t]``.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from dask.base import tokenize

from ..errors import FileFormatError
from ._backends import Backend, from_backend
from ._chunks import default_frame_chunk, file_identity, time_chunks
from ._source import MovieSource

__all__ = ["MemmapBackend", "MemmapOrder", "open_memmap", "parse_memmap_name"]

#: ``"C"``: the file is ``(P, T)`` C-ordered (pixel-major); ``"F"``: ``(P, T)`` F-ordered
#: (frame-major).
MemmapOrder = Literal["C", "F"]

_MMAP_KEYS = ("d1", "d2", "d3", "order", "frames")


class MemmapBackend(Backend):
    """A CaImAn memmap (raw little-endian float32, no header) seen as ``(T, *dims)``.

    ``order="C"``: the file is ``(P, T)`` C-ordered (pixel-contiguous, written by
    ``cm.save_memmap(order='C')``). ``order="F"``: ``(P, T)`` F-ordered, i.e. frame-contiguous
    (written by ``MotionCorrect``). Pixels inside are in Fortran order in both cases.
    """

    def __init__(
        self, path: Path, dims: tuple[int, ...], T: int, order: MemmapOrder, dtype: Any = np.float32
    ):
        self.path = Path(path)
        self.dims = tuple(int(d) for d in dims)
        self.T = int(T)
        self.order = order
        self.dtype = np.dtype(dtype)
        self.shape = (self.T, *self.dims)
        self._lock = threading.Lock()
        self.record()

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

        Kept open (for the interactive fast path); pages it touches stay mapped. Checks first
        that the file has not changed since it was opened (a truncated file would be SIGBUS).
        """
        return self._kept_view(self._open_view)

    def __getitem__(self, key: Any) -> np.ndarray:
        """``key`` as a view of a fresh read-only mapping of the file.

        No copy: the frames are read from the page cache by whoever consumes the block, in
        the file's own memory order (blocks of a frame-major memmap are transposed views of
        contiguous rows). The mapping closes when the block is released, so bulk (dask)
        reads do not keep the file's pages mapped into the process.
        """
        self.check()
        return self._open_view()[key]


class _MemmapReader:
    """Dask-free reader over a memmap backend (keeps the zero-copy view, opened lazily)."""

    def __init__(self, backend: MemmapBackend):
        self.backend = backend

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.backend.view()[key]


def parse_memmap_name(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], MemmapOrder, int]:
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
    order: MemmapOrder
    if found["order"] == "C":
        order = "C"
    elif found["order"] == "F":
        order = "F"
    else:
        raise FileFormatError(
            f"memmap file name {Path(path).name!r} has order {found['order']!r}; expected 'C' "
            "or 'F'"
        )
    if min(d1, d2, d3, T) < 1:
        raise FileFormatError(f"memmap file name {Path(path).name!r} has a zero size: {found}")
    dims = (d1, d2) if d3 == 1 else (d1, d2, d3)
    return dims, order, T


def open_memmap(path: Path, frame_chunk: int | None) -> MovieSource:
    """A CaImAn memmap as a movie source; its size must agree with its name."""
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
    name = f"caiman-memmap-{tokenize(file_identity(path), order, dims, T, frames)}"
    data = from_backend(backend, (time_chunks(T, frames), *[(d,) for d in dims]), name)
    return MovieSource(
        data,
        _MemmapReader(backend),
        f"CaImAn memmap ({order} order) {path}",
        (path,),
        views=backend,
    )
