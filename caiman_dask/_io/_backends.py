"""The base of file backends: picklable, lazily opened, read-only array views of a file.

A backend holds a path, never the data: it pickles as its path (open handles, attributes whose
names start with ``_h``, are dropped) and reopens the file on the next read, so graphs stay
small and work unchanged on a distributed cluster.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ._chunks import FileStamp, check_stamp, file_stamp

__all__ = ["Backend", "from_backend"]


class Backend:
    """A lazily opened, read-only array view of a file; pickles as its path only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    path: Path
    #: the file's identity when it was opened (see :meth:`check`); pickled with the backend
    stamp: FileStamp | None = None
    _lock: threading.Lock

    def record(self) -> None:
        """Remember the file's identity (size, mtime), checked before every read."""
        self.stamp = file_stamp(self.path)

    def check(self) -> None:
        """Raise :class:`~caiman_dask.errors.FileChangedError` if the file changed since it was
        opened (never touch mapped pages of a truncated file: that is SIGBUS)."""
        if self.stamp is not None:
            check_stamp(self.path, self.stamp)

    def _kept_view(self, open_view: Callable[[], np.ndarray]) -> np.ndarray:
        """The file's array view, opened once by ``open_view`` (under the lock) and kept open
        for the fast path; checks first that the file has not changed since it was opened."""
        self.check()
        h = self.__dict__.get("_h_view")
        if h is None:
            with self._lock:
                h = self.__dict__.get("_h_view")
                if h is None:
                    h = self._h_view = open_view()
        return h

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_h")}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Close the file handles opened so far (they reopen on the next read)."""
        for name in [k for k in self.__dict__ if k.startswith("_h")]:
            handle = self.__dict__.pop(name)
            close = getattr(handle, "close", None)
            if close is not None:
                with contextlib.suppress(OSError, ValueError, RuntimeError, TypeError):
                    close()

    def __del__(self) -> None:
        if not sys.is_finalizing():
            self.close()


def from_backend(backend: Backend, chunks: Any, name: str, meta: Any = None) -> da.Array:
    """A dask array reading ``backend`` chunk by chunk (the backend is inlined in each task)."""
    if meta is None:
        meta = np.empty((0,) * backend.ndim, backend.dtype)
    return da.from_array(
        backend, chunks=chunks, name=name, meta=meta, asarray=False, inline_array=True
    )
