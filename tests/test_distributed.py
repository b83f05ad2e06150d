"""Runs unchanged on dask.distributed: identical results, small graphs, local frames, faults.

Real clusters only (``LocalCluster``): one in-process cluster shared by most tests, and one
cluster of worker processes (with nannies and a memory limit) for the memory and fault tests.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dask
import numpy as np
import pytest

import caiman_dask as cd
from caiman_dask.testing import assert_stores_identical

distributed = pytest.importorskip("distributed")
from distributed import Client, LocalCluster  # noqa: E402

KINDS = ["mean", "std", "min", "max", "corr"]
#: Stricter than distributed's 10 MB default: any graph above 1 MB warns, and warnings fail.
GRAPH_LIMIT = "1MB"


@pytest.fixture(scope="module", autouse=True)
def _strict_graphs():
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": GRAPH_LIMIT}):
        yield


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        dashboard_address=":0",  # a free port: no "port in use" warning
        silence_logs=logging.ERROR,
    ) as c:
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def pcluster():
    """Worker processes under nannies (so a killed worker is restarted), 1 GB each."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit="1GB",
        dashboard_address=":0",  # a free port: no "port in use" warning
        silence_logs=logging.CRITICAL,
    ) as c:
        yield c


@pytest.fixture
def pclient(pcluster):
    with Client(pcluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return cd.synthetic(dims=(24, 20), T=90, K=7, seed=11, path=tmp_path_factory.mktemp("syn"))


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    return cd.synthetic(
        dims=(30, 26), T=40, K=5, seed=3, ring_ssub=2, path=tmp_path_factory.mktemp("ring")
    )


def _local(fn):
    """Run ``fn()`` on the local threaded scheduler even while a Client is active."""
    with dask.config.set(scheduler="threads"):
        return fn()


def _movies(m):
    out = {"rcm": cd.rcm(m), "rcm-good": cd.rcm(m, "good"), "rcb": cd.rcb(m)}
    if m.Y is not None:
        out["residuals"] = cd.residuals(m)
        out["raw"] = cd.raw(m)
    return out


# ---------------------------------------------------------------------------------------------
# identical results
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["syn", "ring"])
def test_data_is_identical_on_a_cluster(request, client, which):
    m = cd.open_cnmf(request.getfixturevalue(which).files["cnmf"])
    for name, mv in _movies(m).items():
        ref = _local(lambda mv=mv: mv.data.compute())
        got = mv.data.compute()
        np.testing.assert_array_equal(got, ref, err_msg=name)
        # a reduction over the dask array, and a time window
        np.testing.assert_array_equal(mv.data[5:17].sum(axis=0).compute(), ref[5:17].sum(axis=0))


@pytest.mark.parametrize("which", ["syn", "ring"])
def test_projections_are_identical_on_a_cluster(request, client, which):
    path = request.getfixturevalue(which).files["cnmf"]
    ref_m, m = cd.open_cnmf(path), cd.open_cnmf(path)
    for name in _movies(m):
        ref = _local(lambda name=name: cd.project(_movies(ref_m)[name], KINDS))
        got = cd.project(_movies(m)[name], KINDS)
        for k in KINDS:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} {k}")
    # several streaming movies in one pass, and a window
    ref = _local(lambda: cd.project([cd.rcb(ref_m), cd.raw(ref_m)], "std", frames=slice(3, 40)))
    got = cd.project([cd.rcb(m), cd.raw(m)], "std", frames=slice(3, 40))
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, r)
    assert cd.residuals(m).max == _local(lambda: cd.residuals(ref_m).max)


def test_export_is_byte_identical_on_a_cluster(client, syn, tmp_path):
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "local.zarr", chunk_frames=8, progress=False))
    # progress=True: distributed's progress bar
    out = cd.to_zarr(cd.open_cnmf(syn.files["cnmf"]), tmp_path / "c.zarr", chunk_frames=8)
    assert_stores_identical(ref, out)
    # sharded, zarr v3; and zarr v2
    kw = {"movies": ("residuals",), "chunk_frames": 4, "progress": False}
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "ls.zarr", shard_frames=12, **kw))
    assert_stores_identical(ref, cd.to_zarr(syn, tmp_path / "cs.zarr", shard_frames=12, **kw))
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "l2.zarr", zarr_format=2, **kw))
    assert_stores_identical(ref, cd.to_zarr(syn, tmp_path / "c2.zarr", zarr_format=2, **kw))


def test_in_memory_model_projection_scatters_its_arrays(client):
    """NumPy factors and movie (3 MB here) go to the cluster by scatter, not in the graph."""
    m = cd.synthetic(dims=(48, 40), T=400, K=12, seed=5)
    assert m.Y.nbytes > 2e6
    ref = _local(
        lambda: cd.project(cd.residuals(cd.synthetic(dims=(48, 40), T=400, K=12, seed=5)), KINDS)
    )
    got = cd.project(cd.residuals(m), KINDS)
    for k in KINDS:
        np.testing.assert_array_equal(got[k], ref[k])


def test_in_memory_model_export(client, tmp_path):
    """Factors of an in-memory model are written locally, never shipped in a graph."""
    m = cd.synthetic(dims=(48, 40), T=3000, K=60, seed=5)  # C: 60 x 3000 float64 = 1.4 MB
    out = cd.to_zarr(m, tmp_path / "m.zarr", movies=("rcm",), projections=(), progress=False)
    np.testing.assert_array_equal(cd.open_zarr(out).C.compute(), m.C.compute(scheduler="sync"))


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "caiman_dask._cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def tcp_scheduler(pcluster):
    return pcluster.scheduler_address


def test_cli_export(tcp_scheduler, syn, tmp_path):
    base = ["export", str(syn.files["cnmf"]), "--movie", str(syn.files["movie"]), "--quiet"]
    # both runs at once (each pays Python's start-up): an existing scheduler, and a new
    # LocalCluster of worker processes
    runs = {
        "s.zarr": _cli(*base, "-o", str(tmp_path / "s.zarr"), "--scheduler", tcp_scheduler),
        "w.zarr": _cli(*base, "-o", str(tmp_path / "w.zarr"), "--workers", "2"),
    }
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "local.zarr", progress=False))
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "running on tcp://" in out
        assert_stores_identical(ref, tmp_path / name)


def test_scheduler_context(tcp_scheduler, syn):
    from caiman_dask._compute import active_client, scheduler

    ref = _local(lambda: cd.project(cd.residuals(syn), "std"))
    assert active_client() is None
    with scheduler(tcp_scheduler) as c:
        assert active_client() is c
        np.testing.assert_array_equal(cd.project(cd.residuals(syn), "std"), ref)
    assert active_client() is None
    with scheduler() as c:  # neither: nothing changes
        assert c is None and active_client() is None


# ---------------------------------------------------------------------------------------------
# graph hygiene
# ---------------------------------------------------------------------------------------------


def test_graph_of_the_benchmark_size_model_is_small(tmp_path):
    """512x512, T=8000, K=500 with an 8.4 GB movie (a sparse file): graphs stay tiny."""
    from distributed.protocol import serialize, to_serialize

    from caiman_dask._synthetic import _footprints

    dims, T, K = (512, 512), 8000, 500
    rng = np.random.default_rng(0)
    A = _footprints(rng, dims, K, 150.0, 0.25)
    C = rng.standard_normal((K, T))
    h5 = cd.write_cnmf_hdf5(
        tmp_path / "big.hdf5",
        A=A,
        C=C,
        dims=dims,
        b=rng.random((512 * 512, 2)),
        f=rng.random((2, T)),
    )
    mm = tmp_path / "big_d1_512_d2_512_d3_1_order_F_frames_8000.mmap"
    with open(mm, "wb") as fh:
        fh.truncate(4 * 512 * 512 * T)  # sparse: no disk, no time
    m = cd.open_cnmf(h5, movie=mm)
    for name, mv in (("residuals", cd.residuals(m)), ("rcm", cd.rcm(m)), ("rcb", cd.rcb(m))):
        graph = dict(mv.data.__dask_graph__())
        size = len(pickle.dumps(graph))
        _header, frames = serialize(to_serialize(mv.data.__dask_graph__()), on_error="raise")
        dist_size = sum(len(f) for f in frames)
        assert size < 1e6 and dist_size < 1e6, (name, size, dist_size)
    assert mm.stat().st_blocks == 0  # never read, never computed


def _transfers(client) -> list[dict]:
    return [
        e
        for log in client.run(lambda dask_worker: list(dask_worker.transfer_incoming_log)).values()
        for e in log
    ]


def _task_runs(client) -> Counter:
    """Tasks executed per key since the plugin was registered."""
    return Counter(client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler._cd_runs)))


class _CountRuns:
    name = "caiman-dask-count-runs"

    def start(self, scheduler):
        scheduler._cd_runs = Counter()
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.scheduler._cd_runs[key] += 1


def test_factors_reach_each_worker_once(client, syn):
    from distributed.diagnostics.plugin import SchedulerPlugin

    plugin = type("CountRuns", (_CountRuns, SchedulerPlugin), {})()
    client.register_plugin(plugin)
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
    m = cd.open_cnmf(syn.files["cnmf"], frame_chunk=6)  # 15 blocks over 2 workers
    cd.project([cd.residuals(m), cd.raw(m)], KINDS)
    runs = _task_runs(client)
    # every task ran once: factors are read once, the footprint operator is prepared once
    assert runs and max(runs.values()) == 1, runs.most_common(3)
    # and each worker received any key at most once
    per_worker = Counter()
    for who, log in client.run(
        lambda dask_worker: [list(e["keys"]) for e in dask_worker.transfer_incoming_log]
    ).items():
        for keys in log:
            per_worker.update((who, k) for k in keys)
    assert not per_worker or max(per_worker.values()) == 1


# ---------------------------------------------------------------------------------------------
# interactive frames never touch the scheduler
# ---------------------------------------------------------------------------------------------


def test_indexing_submits_nothing(client, syn, ring, monkeypatch):
    submitted = []
    for meth in ("_graph_to_futures", "submit", "map", "scatter", "compute", "get"):
        orig = getattr(Client, meth)

        def wrapped(self, *a, _orig=orig, _meth=meth, **kw):
            submitted.append(_meth)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(Client, meth, wrapped)

    def counter():
        return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)

    before = counter()
    for src in (syn, ring):
        m = cd.open_cnmf(src.files["cnmf"])  # fresh: loads its host factors on first frame
        for mv in _movies(m).values():
            frame = mv[7]
            assert frame.shape == m.dims
            mv[3:9, 2:10]
            mv[[1, 5, 2], ..., 4]
            np.asarray(mv[-1])
            mv[20]
    submitted_by_indexing = list(submitted)
    assert counter() == before
    assert submitted_by_indexing == []


# ---------------------------------------------------------------------------------------------
# memory and faults (worker processes under nannies)
# ---------------------------------------------------------------------------------------------


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


class _StatusWatch(threading.Thread):
    """Polls the scheduler for paused workers while a computation runs."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.stop, self.paused, self.peak = client, threading.Event(), set(), 0

    def run(self):
        def poll(dask_scheduler):
            return {
                a: (ws.status.name, ws.memory.process) for a, ws in dask_scheduler.workers.items()
            }

        while not self.stop.is_set():
            st = self.client.run_on_scheduler(poll)
            self.paused |= {a for a, (s, _) in st.items() if s != "running"}
            self.peak = max(self.peak, *(mem for _, mem in st.values()))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    """A model with enough frames for a worker to be killed in the middle of its export."""
    return cd.synthetic(dims=(64, 64), T=400, K=30, seed=4, path=tmp_path_factory.mktemp("mid"))


def test_memory_limited_workers_are_not_paused(pclient, tmp_path):
    """Scaled down: 1 GB workers (~0.3 GB of it is the idle process) stream projections of a
    0.63 GB float64 residual movie and export a 0.63 GB RCM without pauses or restarts."""
    from caiman_dask._synthetic import _footprints

    dims, T, K = (256, 256), 1200, 30
    rng = np.random.default_rng(1)
    h5 = cd.write_cnmf_hdf5(
        tmp_path / "m.hdf5",
        A=_footprints(rng, dims, K, 150.0, 0.25),
        C=rng.standard_normal((K, T)),
        dims=dims,
        b=rng.random((256 * 256, 1)),
        f=rng.random((1, T)),
    )
    mm = tmp_path / f"m_d1_256_d2_256_d3_1_order_F_frames_{T}.mmap"
    with open(mm, "wb") as fh:
        fh.truncate(4 * 256 * 256 * T)  # a sparse file of zeros
    m = cd.open_cnmf(h5, movie=mm)
    pids = _worker_pids(pclient)
    watch = _StatusWatch(pclient)
    watch.start()
    try:
        cd.project(cd.residuals(m), KINDS)
        cd.to_zarr(
            m, tmp_path / "x.zarr", movies=("rcm",), projections=(), codec="lz4", progress=False
        )
    finally:
        watch.stop.set()
        watch.join()
    assert not watch.paused
    assert _worker_pids(pclient) == pids  # no worker was restarted
    assert watch.peak < 0.8e9, watch.peak


class _Killer(threading.Thread):
    """SIGKILLs one worker process once ``ready()`` holds, while ``done`` is not set."""

    def __init__(self, client, ready):
        super().__init__(daemon=True)
        self.client, self.ready = client, ready
        self.done, self.killed_while_running, self.error = threading.Event(), False, None
        self.pids = list(_worker_pids(client).values())

    def run(self):
        try:
            deadline = time.time() + 120
            while not self.done.is_set() and time.time() < deadline:
                if self.ready():
                    os.kill(self.pids[0], signal.SIGKILL)
                    self.killed_while_running = not self.done.is_set()
                    return
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _markers(path: Path) -> int:
    return len(list((path / "_progress").rglob("c/*"))) if path.exists() else 0


def test_killed_worker_export_completes_byte_identical(pclient, mid, tmp_path):
    ref = _local(lambda: cd.to_zarr(mid, tmp_path / "local.zarr", chunk_frames=10, progress=False))
    out = tmp_path / "killed.zarr"
    killer = _Killer(pclient, lambda: _markers(out) >= 10)
    killer.start()
    try:
        cd.to_zarr(cd.open_cnmf(mid.files["cnmf"]), out, chunk_frames=10, progress=False)
    finally:
        killer.done.set()
        killer.join()
    assert killer.error is None and killer.killed_while_running
    pclient.wait_for_workers(2, timeout=60)
    assert killer.pids[0] not in _worker_pids(pclient).values()
    assert cd.store_info(out)["complete"] is True
    assert_stores_identical(ref, out)


def test_killed_worker_projection_is_identical(pclient, mid):

    def some_blocks_done():
        counts = pclient.run_on_scheduler(
            lambda dask_scheduler: (
                dask_scheduler.task_prefixes["block_stats"].state_counts["memory"]
                if "block_stats" in dask_scheduler.task_prefixes
                else 0
            )
        )
        return counts >= 10

    m = cd.open_cnmf(mid.files["cnmf"], frame_chunk=5)  # 80 blocks
    killer = _Killer(pclient, some_blocks_done)
    killer.start()
    try:
        got = cd.project(cd.residuals(m), KINDS)
    finally:
        killer.done.set()
        killer.join()
    assert killer.error is None and killer.killed_while_running
    # frame_chunk only changes the merge tree's leaves: compare with the same chunking locally
    ref_m = cd.open_cnmf(mid.files["cnmf"], frame_chunk=5)
    ref = _local(lambda: cd.project(cd.residuals(ref_m), KINDS))
    for k in KINDS:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
