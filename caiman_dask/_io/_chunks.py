"""How movies are cut into dask chunks, and the cheap identity that names their graphs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CHUNK_BYTES", "default_frame_chunk", "file_identity", "time_chunks"]

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
