"""Running dask work: the local threaded scheduler by default, or an active distributed Client.

``compute(graphs, progress=...)`` is the one place the library computes bulk work; it shows
dask's progress bar locally and ``distributed.progress`` on a cluster, and is interruptible
(Ctrl-C cancels the futures on a cluster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import dask

__all__ = ["active_client", "compute", "scheduler"]


def active_client() -> Any:
    """The distributed ``Client`` dask would use now, or ``None`` (local scheduler)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    # an explicit dask.config scheduler (e.g. "threads", "sync") wins over a Client
    sched = dask.config.get("scheduler", None)
    if sched is not None and sched not in ("dask.distributed", "distributed"):
        return None
    return client


def compute(graphs: Sequence[Any], progress: bool = False) -> list[Any]:
    """Compute dask collections together (shared inputs are read once).

    With an active ``distributed.Client`` the work runs on the cluster; otherwise on dask's
    default (threaded) scheduler.
    """
    if not graphs:
        return []
    client = active_client()
    if client is None:
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0):
                return list(dask.compute(*graphs))
        return list(dask.compute(*graphs))
    futures = client.compute(list(graphs))
    try:
        if progress:
            from distributed import progress as show

            show(futures)
        return list(client.gather(futures))
    except KeyboardInterrupt:
        client.cancel(futures)
        raise


@contextlib.contextmanager
def scheduler(address: str | None = None, *, workers: int | None = None) -> Iterator[Any]:
    """Use a dask.distributed scheduler inside the block.

    ``address`` connects to an existing scheduler (``"tcp://host:8786"``); ``workers`` starts a
    ``LocalCluster`` with that many single-threaded worker processes; neither: nothing
    changes (the local threaded scheduler, or a Client you made yourself).
    """
    if address is None and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    if address is not None:
        with Client(address) as client:
            yield client
        return
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        yield client
