"""How movies are cut into dask chunks, and the cheap identity that names their graphs."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._options import positive_int
from ..errors import FileChangedError, MissingFileError

__all__ = [
    "CHUNK_BYTES",
    "FileStamp",
    "check_frame_chunk",
    "check_stamp",
    "default_frame_chunk",
    "file_identity",
    "file_stamp",
    "time_chunks",
]

#: What identifies a file's contents cheaply: its size in bytes and modification time (ns).
#: (Not the inode or device: workers of a cluster may see a shared file through other mounts,
#: or a copy staged at the same path; a file written anew has a new modification time.)
FileStamp = tuple[int, int]

#: Bytes of output a dask chunk of frames aims for.
CHUNK_BYTES = 64 * 2**20


def default_frame_chunk(dims: Sequence[int], itemsize: int = 8) -> int:
    """Frames per time chunk so that one chunk of ``itemsize`` pixels is about 64 MiB."""
    return max(1, CHUNK_BYTES // (math.prod(dims) * itemsize))


def time_chunks(T: int, frames: int) -> tuple[int, ...]:
    """``T`` frames in chunks of ``frames`` (the last one shorter); ``()`` for ``T == 0``."""
    frames = max(1, int(frames))
    full, rest = divmod(T, frames)
    return (frames,) * full + ((rest,) if rest else ())


def file_identity(path: Path) -> tuple[str, int, int]:
    """Resolved path, size and modification time: what a graph name of the file hashes."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def check_frame_chunk(value: Any, name: str = "frame_chunk") -> int | None:
    """``value`` if it is ``None`` or a positive int, else an :class:`OptionError`."""
    return positive_int(name, value, what="frames", default="about 64 MiB per chunk")


def file_stamp(path: Path) -> FileStamp:
    """The file's size and modification time, recorded when a reader opens it."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def check_stamp(path: Path, stamp: FileStamp) -> None:
    """Raise :class:`FileChangedError` unless ``path`` is still the file stamped ``stamp``.

    Called before every read: a memory map of a file truncated since it was opened would kill
    the process (SIGBUS) on its first page past the new end, and a replaced file would give
    frames of another movie.
    """
    try:
        now = file_stamp(path)
    except FileNotFoundError as e:
        raise MissingFileError(
            f"{str(path)!r} was deleted or moved after it was opened; put it back, or open the "
            "result again."
        ) from e
    if now == stamp:
        return
    what = []
    if now[0] != stamp[0]:
        what.append(f"its size changed from {stamp[0]:,} to {now[0]:,} bytes")
    if now[1] != stamp[1]:
        what.append("it was modified or replaced")
    raise FileChangedError(
        f"{str(path)!r} changed after it was opened ({'; '.join(what)}); reading it now could "
        "give frames of another movie, or crash on a truncated file. Open it again "
        "(cd.open_cnmf / cd.open_movie) once it is complete."
    )
