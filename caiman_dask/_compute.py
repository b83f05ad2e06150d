"""Running dask work: the local threaded scheduler by default, or an active distributed Client.

``compute(graphs, progress=...)`` is the one place the library computes bulk work; it shows
dask's progress bar locally and ``distributed.progress`` on a cluster, and is interruptible
(Ctrl-C cancels the futures on a cluster).

On a cluster, graphs stay small: factors read from files travel as file references (the
workers read them), and in-memory arrays embedded in a graph (a model built from NumPy arrays)
are scattered to the cluster once per computation instead of being pickled into the graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import dask
from dask.diagnostics import ProgressBar
from dask.sizeof import sizeof
from dask.task_spec import DataNode, GraphNode
from distributed import Client, LocalCluster, default_client
from distributed import progress as show_progress

from ._options import positive_int
from .errors import OptionError, SchedulerError

__all__ = ["active_client", "check_workers", "compute", "scheduler"]


def active_client() -> Any:
    """The distributed ``Client`` dask would use now, or ``None`` (local scheduler)."""
    try:
        client = default_client()
    except ValueError:
        return None
    # an explicit dask.config scheduler (e.g. "threads", "sync") wins over a Client
    sched = dask.config.get("scheduler", None)
    if sched is not None and sched not in ("dask.distributed", "distributed"):
        return None
    return client


#: In-memory values embedded in a graph at least this large are scattered, not pickled into it.
SCATTER_BYTES = 1 << 20


def _literal(value: Any) -> Any:
    """The data of a graph value that is a literal (not a task), else ``None``.

    Graph values are ``dask.task_spec`` nodes (dask's public task specification): a
    ``DataNode`` wraps a literal, any other ``GraphNode`` (``Task``, ``Alias``, ``List``...)
    computes something. Legacy graphs may still hold a literal as itself, or a task as a tuple.
    """
    if isinstance(value, DataNode):
        return value.value
    if isinstance(value, GraphNode) or callable(value) or isinstance(value, tuple):
        return None
    return value


def _scatter_literals(client: Any, graphs: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Replace large in-memory literals of the graphs by futures of data scattered once.

    Returns the rebuilt collections and the futures (keep them alive until the result is
    gathered). Collections without large literals are returned unchanged.
    """
    out: list[Any] = []
    held: list[Any] = []
    for g in graphs:
        if not dask.is_dask_collection(g):
            out.append(g)
            continue
        dsk = g.__dask_graph__()
        big: dict[Any, Any] = {}
        for key, value in dsk.items():
            data = _literal(value)
            if data is not None and sizeof(data) >= SCATTER_BYTES:
                big[key] = data
        if not big:
            out.append(g)
            continue
        futures = client.scatter(big, hash=False)
        held.extend(futures.values())
        new = dict(dsk)
        new.update(futures)
        rebuild, args = g.__dask_postpersist__()
        out.append(rebuild(new, *args))
    return out, held


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
            with ProgressBar(minimum=1.0):
                return list(dask.compute(*graphs))
        return list(dask.compute(*graphs))
    graphs, _held = _scatter_literals(client, graphs)  # scattered data: alive until gathered
    futures = client.compute(list(graphs))
    try:
        if progress:
            show_progress(futures)
        return list(client.gather(futures))
    except KeyboardInterrupt:
        client.cancel(futures)
        raise


#: Seconds :func:`scheduler` waits for a scheduler address to answer before giving up.
CONNECT_TIMEOUT = 10.0


def check_workers(workers: Any, name: str = "workers") -> int | None:
    """``workers`` if it is ``None`` or a positive int, else an :class:`OptionError`."""
    return positive_int(
        name, workers, what="worker processes", default="the local threaded scheduler"
    )


@contextlib.contextmanager
def scheduler(
    address: str | None = None,
    *,
    workers: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Iterator[Any]:
    """Use a dask.distributed scheduler inside the block.

    ``address`` connects to an existing scheduler (``"tcp://host:8786"``); ``workers`` starts a
    ``LocalCluster`` with that many single-threaded worker processes; neither: nothing
    changes (the local threaded scheduler, or a Client you made yourself).

    Parameters
    ----------
    address
        A scheduler address such as ``"tcp://10.0.0.1:8786"``.
    workers
        A positive number of worker processes for a fresh ``LocalCluster``.
    timeout
        Seconds to wait for ``address`` to answer.

    Raises
    ------
    OptionError
        ``workers`` is not a positive int, ``address`` not a string, or both are given.
    SchedulerError
        Nothing answers at ``address`` within ``timeout`` seconds, or the cluster cannot start.
    """
    workers = check_workers(workers)
    if address is not None and not isinstance(address, str):
        raise OptionError(
            f"address={address!r} is not a scheduler address; pass a string such as "
            "'tcp://10.0.0.1:8786'."
        )
    if address is not None and workers is not None:
        raise OptionError(
            f"address={address!r} and workers={workers} were both given; pass the address of "
            "an existing scheduler or a number of workers for a new local cluster, not both."
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise OptionError(f"timeout={timeout!r} must be a positive number of seconds")
    if address is None and workers is None:
        yield None
        return
    if address is not None:
        try:
            client = Client(address, timeout=timeout)
        except (OSError, ValueError, TypeError) as e:  # (TimeoutError is an OSError)
            raise SchedulerError(
                f"no dask scheduler answered at address={address!r} within {timeout:g} s "
                f"({type(e).__name__}: {e}). Check that the scheduler is running and the "
                "address (tcp://host:port) is reachable from here."
            ) from e
        with client:
            yield client
        return
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
    except (OSError, RuntimeError) as e:
        raise SchedulerError(
            f"could not start a LocalCluster with workers={workers} ({type(e).__name__}: {e}); "
            "try fewer workers, or run without a cluster."
        ) from e
    with cluster, Client(cluster) as client:
        yield client
