"""caiman_dask on dask.distributed against the local threaded scheduler, in the same run.

On the synthetic 512×512, T=8000, K=500 model of ``bench_frames.py`` (same files; the movie Y
is an 8.4 GB float32 memmap) this prints

- the residual projections ``cd.project(cd.residuals(model), ["mean", "std", "min", "max"])``
  (a fresh model each run, so nothing is cached) and the RCM export
  ``cd.to_zarr(model, ..., movies=("rcm",), projections=())`` (16.8 GB of float64 frames,
  zstd), on a ``LocalCluster`` of 2 worker processes × 1 thread with ``memory_limit="2GB"`` per
  worker, against dask's threaded scheduler with 2 threads; goal: ≤ 1.5× the threaded time.
  Results are checked: projections bit-identical, stores byte-identical;
- what travels: the task-graph bytes the client submits to the scheduler (the size of
  distributed's own serialization of each submitted graph, measured the way distributed does
  for its "large graph" warning), the bytes moved between workers (the sum of the workers'
  ``transfer_incoming_log`` totals) and the bytes scattered (none for file-backed models: the
  workers read the factors and Y from the files themselves);
- whether any worker was paused (memory above 80 % of its limit) or restarted, and the peak
  worker process memory seen by the scheduler (polled every 0.2 s);
- frame latency ``movie[t]`` with a Client active against no Client (the fast path never
  touches the scheduler; the scheduler's transition counter is checked).

The script reports; it always exits 0.

Usage::

    python benchmarks/bench_distributed.py            # full size (reuses bench_frames' data)
    python benchmarks/bench_distributed.py --quick    # 128×128, T=1000, K=60
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    FULL,
    QUICK,
    Row,
    benchmark_model,
    loadavg_line,
    machine_header,
    print_table,
    time_call,
    warm_page_cache,
)

import caiman_dask as cd

KINDS = ["mean", "std", "min", "max"]
GOAL = 1.5


class GraphBytes:
    """Wraps ``Client._graph_to_futures`` to add up the serialized size of submitted graphs."""

    def __init__(self) -> None:
        self.total = 0
        self.graphs = 0
        self.largest = 0

    def install(self) -> Any:
        from distributed import Client
        from distributed.protocol import serialize, to_serialize

        orig = Client._graph_to_futures
        me = self

        def wrapped(client: Any, expr: Any, *args: Any, **kwargs: Any) -> Any:
            _header, frames = serialize(to_serialize(expr), on_error="raise")
            n = sum(len(memoryview(f).cast("B")) for f in frames)
            me.total += n
            me.graphs += 1
            me.largest = max(me.largest, n)
            return orig(client, expr, *args, **kwargs)

        Client._graph_to_futures = wrapped  # type: ignore[method-assign]
        return lambda: setattr(Client, "_graph_to_futures", orig)


class WorkerWatch(threading.Thread):
    """Polls the scheduler: paused workers, peak process memory, spilled bytes."""

    def __init__(self, client: Any, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.client, self.every = client, every
        self.stop = threading.Event()
        self.paused: set[str] = set()
        self.paused_s = 0.0
        self.peak = 0
        self.spilled = 0

    def run(self) -> None:
        def poll(dask_scheduler: Any) -> dict[str, tuple[str, int, int]]:
            return {
                a: (ws.status.name, ws.memory.process, ws.memory.spilled)
                for a, ws in dask_scheduler.workers.items()
            }

        while not self.stop.is_set():
            try:
                st = self.client.run_on_scheduler(poll)
            except Exception:  # noqa: BLE001 - the cluster is closing
                return
            bad = {a for a, (s, _, _) in st.items() if s != "running"}
            if bad:
                self.paused |= bad
                self.paused_s += self.every
            for _, mem, spilled in st.values():
                self.peak = max(self.peak, mem)
                self.spilled = max(self.spilled, spilled)
            time.sleep(self.every)


def worker_transfer_bytes(client: Any) -> int:
    logs = client.run(lambda dask_worker: [e["total"] for e in dask_worker.transfer_incoming_log])
    return int(sum(sum(v) for v in logs.values()))


def clear_transfer_logs(client: Any) -> None:
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())


def files_identical(a: Path, b: Path) -> bool:
    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    fa, fb = files(a), files(b)
    if fa != fb:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, fa, shallow=False)
    return not mismatch and not errors


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} GB"  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128×128, T=1000, K=60")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--out-dir", type=Path, default=None, help="where the exports go (tmp)")
    p.add_argument("--memory-limit", default="2GB", help="per worker")
    args = p.parse_args(argv)
    spec = QUICK if args.quick else FULL

    print(machine_header(f"bench_distributed ({'quick' if args.quick else 'full'} size)"))
    import distributed

    print(f"  distributed {distributed.__version__}")
    benchmark_model(spec, args.data_dir)
    h5 = args.data_dir / spec.tag / "synthetic.hdf5"
    movie = next((args.data_dir / spec.tag).glob("*.mmap"))
    secs = warm_page_cache(movie)
    print(
        f"model {spec.tag}: movie {movie.stat().st_size / 1e9:.2f} GB (page cache warmed in "
        f"{secs:.1f} s)"
    )

    def fresh() -> Any:
        cd.forget_statistics()  # nothing cached from an earlier run
        return cd.open_cnmf(h5, movie=movie)

    out_root = Path(tempfile.mkdtemp(prefix="bench_distributed_", dir=args.out_dir))
    rows: list[Row] = []
    notes: list[str] = []

    # ---- threaded baseline (2 threads: the same CPUs as 2 workers × 1 thread) ---------------
    with dask.config.set(scheduler="threads", num_workers=2):
        t0 = time.perf_counter()
        ref_proj = cd.project(cd.residuals(fresh()), KINDS)
        t_proj_threads = time.perf_counter() - t0
        print(f"threaded: residual projections {t_proj_threads:.1f} s", flush=True)
        t0 = time.perf_counter()
        ref_store = cd.to_zarr(
            fresh(), out_root / "threads.zarr", movies=("rcm",), projections=(), progress=False
        )
        t_export_threads = time.perf_counter() - t0
        print(f"threaded: RCM export {t_export_threads:.1f} s", flush=True)

    # ---- frames without a Client -------------------------------------------------------------
    m = fresh()
    rng = np.random.default_rng(0)
    ts = [int(t) for t in rng.integers(0, spec.T, 64)]
    movies = {"rcm[t]": cd.rcm(m), "residuals[t]": cd.residuals(m)}
    frames_local = {
        k: time_call(lambda t, mv=mv: mv[t], ts, budget_s=2.0) for k, mv in movies.items()
    }

    # ---- the cluster ---------------------------------------------------------------------------
    from distributed import Client, LocalCluster

    graph_bytes = GraphBytes()
    uninstall = graph_bytes.install()
    with (
        dask.config.set({"distributed.admin.low-level-log-length": 1_000_000}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit=args.memory_limit,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        # warm the workers (imports, numba caches) outside the timings
        cd.project(cd.residuals(cd.open_cnmf(h5, movie=movie)), "mean", frames=slice(0, 2))
        watch = WorkerWatch(client)
        watch.start()

        clear_transfer_logs(client)
        g0 = graph_bytes.total
        t0 = time.perf_counter()
        proj = cd.project(cd.residuals(fresh()), KINDS)
        t_proj = time.perf_counter() - t0
        proj_graph, proj_moved = graph_bytes.total - g0, worker_transfer_bytes(client)
        same_proj = all(np.array_equal(proj[k], ref_proj[k], equal_nan=True) for k in KINDS)
        print(f"cluster: residual projections {t_proj:.1f} s", flush=True)

        clear_transfer_logs(client)
        g0 = graph_bytes.total
        t0 = time.perf_counter()
        store = cd.to_zarr(
            fresh(), out_root / "cluster.zarr", movies=("rcm",), projections=(), progress=False
        )
        t_export = time.perf_counter() - t0
        exp_graph, exp_moved = graph_bytes.total - g0, worker_transfer_bytes(client)
        print(f"cluster: RCM export {t_export:.1f} s", flush=True)

        # frames with the Client active: nothing may reach the scheduler
        m = fresh()
        movies_c = {"rcm[t]": cd.rcm(m), "residuals[t]": cd.residuals(m)}

        def transitions() -> int:
            return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)

        before = transitions()
        frames_client = {
            k: time_call(lambda t, mv=mv: mv[t], ts, budget_s=2.0) for k, mv in movies_c.items()
        }
        frame_transitions = transitions() - before

        watch.stop.set()
        watch.join()
        restarted = [a for a, pid in client.run(os.getpid).items() if pids.get(a) != pid]
        restarted += [a for a in pids if a not in client.scheduler_info()["workers"]]
    uninstall()
    same_store = files_identical(ref_store, store)
    shutil.rmtree(out_root, ignore_errors=True)

    for name, ours, base, ok in (
        ("residual projections (mean/std/min/max)", t_proj, t_proj_threads, same_proj),
        ("RCM export to zarr (zstd)", t_export, t_export_threads, same_store),
    ):
        rows.append(
            Row(
                f"{name}{'' if ok else ' [RESULT DIFFERS]'}",
                ours * 1e3,
                "threaded, 2 threads",
                base * 1e3,
                f"≤ {GOAL}× threaded",
                ours <= GOAL * base,
            )
        )
    for k in movies:
        rows.append(
            Row(
                f"{k} with a Client active",
                frames_client[k].median_ms,
                "no Client",
                frames_local[k].median_ms,
                "no scheduler round trip",
                frame_transitions == 0,
                ours_cpu_ms=frames_client[k].cpu_median_ms,
            )
        )

    print()
    print_table(
        rows,
        title=f"dask.distributed: LocalCluster(2 workers × 1 thread, memory_limit="
        f"{args.memory_limit!r}) vs threaded — {spec.tag}",
    )
    notes += [
        f"results identical to the threaded run: projections {'yes' if same_proj else 'NO'}, "
        f"export store {'byte-identical' if same_store else 'DIFFERENT'}",
        f"task-graph bytes submitted to the scheduler (distributed's serialization): projections "
        f"{fmt_bytes(proj_graph)}, export {fmt_bytes(exp_graph)}; largest single graph "
        f"{fmt_bytes(graph_bytes.largest)} over {graph_bytes.graphs} graphs",
        f"bytes moved between workers (sum of transfer_incoming_log): projections "
        f"{fmt_bytes(proj_moved)}, export {fmt_bytes(exp_moved)}; scattered: 0 B (factors and "
        "Y are read by the workers from the files)",
        f"movie bytes: Y {fmt_bytes(spec.movie_bytes)} (float32), RCM "
        f"{fmt_bytes(2 * spec.movie_bytes)} (float64)",
        f"workers paused: {sorted(watch.paused) or 'none'} (~{watch.paused_s:.1f} s); restarted: "
        f"{restarted or 'none'}; peak worker process memory {fmt_bytes(watch.peak)} of "
        f"{args.memory_limit}; spilled to disk (max) {fmt_bytes(watch.spilled)}",
        f"scheduler transitions caused by {len(ts)}-frame indexing runs with a Client: "
        f"{frame_transitions}",
        loadavg_line(),
    ]
    for n in notes:
        print("  " + n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
