"""Runs on a real SLURM cluster through dask-jobqueue: what the README's SLURM section runs.

Every worker is a real ``sbatch`` job (1 core, 1 GB) started by ``dask_jobqueue.SLURMCluster``;
the results are compared bitwise with the local threaded scheduler. CI starts a one-node SLURM
cluster on its machine first (``.ci/slurm.sh``) and sets ``CAIMAN_DASK_REQUIRE_SLURM=1``: there a
missing SLURM fails; elsewhere the module skips, saying why.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import Client, get_task_stream

import caiman_dask as cd
from caiman_dask.testing import assert_stores_identical

KINDS = ["mean", "std", "min", "max", "corr"]
REQUIRED = os.environ.get("CAIMAN_DASK_REQUIRE_SLURM") == "1"
NO_WORKERS_TIMEOUT = "120s"
FIX = "run `sudo bash .ci/slurm.sh` to start a one-node SLURM cluster on this machine"


def _no_slurm(reason: str):
    if REQUIRED:
        pytest.fail(f"SLURM is required (CAIMAN_DASK_REQUIRE_SLURM=1) but {reason}; {FIX}")
    pytest.skip(f"no SLURM: {reason} ({FIX})")


def _slurm_problem() -> str | None:
    """Why no job can run here, or None when a SLURM controller answers with a usable node."""
    missing = [c for c in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH"
    try:
        r = subprocess.run(
            ["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if r.returncode != 0:
        return f"sinfo failed ({r.stderr.strip() or r.returncode})"
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()]
    usable = [s for a, s in rows if a == "up" and s.rstrip("*~#") in {"idle", "mix", "alloc"}]
    if not usable:
        return f"no partition is up with a usable node (sinfo: {r.stdout.strip()!r})"
    return None


@pytest.fixture(scope="module")
def SLURMCluster():
    problem = _slurm_problem()
    if problem is not None:
        _no_slurm(problem)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        _no_slurm("dask-jobqueue is not installed (pip install -e '.[test]')")
    return SLURMCluster


def _job_logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(log_dir.glob("*")))


@pytest.fixture(scope="module")
def slurm(SLURMCluster, tmp_path_factory):
    """The README's cluster, sized for a 2-CPU test machine: 2 jobs of 1 worker each."""
    log_dir = tmp_path_factory.mktemp("slurm-logs")
    # a computation that no job ever comes to fails after 2 minutes instead of hanging the test
    with dask.config.set({"distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}):
        cluster = SLURMCluster(
            cores=1,  # CPUs per SLURM job
            processes=1,  # worker processes per job: 1 thread each
            memory="1GB",  # per job
            walltime="00:10:00",
            job_name="caiman-dask-test",
            log_directory=str(log_dir),  # the jobs' stdout/stderr (SBATCH -o/-e)
            python=sys.executable,  # the workers run this test's Python environment
            scheduler_options={"dashboard_address": ":0"},  # a free port
            silence_logs=logging.ERROR,
        )
    cluster.adapt(minimum_jobs=2, maximum_jobs=2)  # a lost job is replaced
    client = Client(cluster)
    try:
        try:
            client.wait_for_workers(2, timeout=120)
        except TimeoutError:
            pytest.fail(
                f"2 SLURM jobs did not start within 120 s; squeue: {_jobs()}; job logs:\n"
                + _job_logs(log_dir)
            )
        yield cluster, client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    # From files: the workers open the CNMF .hdf5 and the movie at the same paths.
    return cd.synthetic(dims=(24, 20), T=90, K=7, seed=11, path=tmp_path_factory.mktemp("syn"))


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    """Enough frames (40 chunks) for a job to be cancelled in the middle of its export."""
    return cd.synthetic(dims=(64, 64), T=400, K=30, seed=4, path=tmp_path_factory.mktemp("mid"))


def _local(fn):
    """Run ``fn()`` on the local threaded scheduler even while a Client is active."""
    with dask.config.set(scheduler="threads"):
        return fn()


def _jobs() -> dict[str, str]:
    """SLURM's own view: job id -> state, for our test jobs."""
    out = subprocess.run(
        ["squeue", "-h", "-n", "caiman-dask-test", "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _worker_jobs(client) -> dict[str, str]:
    """Worker address -> the SLURM job id it runs in (from the worker's own environment)."""
    return client.run(lambda: os.environ.get("SLURM_JOB_ID", "not a SLURM job"))


def test_workers_are_sbatch_jobs(slurm):
    cluster, client = slurm
    by_worker = _worker_jobs(client)
    assert len(by_worker) == 2
    assert set(by_worker.values()) == {job.job_id for job in cluster.workers.values()}
    running = _jobs()
    assert all(running.get(j) == "RUNNING" for j in by_worker.values()), (by_worker, running)
    script = cluster.job_script()
    assert "#SBATCH --cpus-per-task=1" in script and sys.executable in script


def test_export_is_byte_identical_on_slurm(slurm, syn, tmp_path):
    _, client = slurm
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "local.zarr", chunk_frames=8, progress=False))
    with get_task_stream(client) as ts:
        out = cd.to_zarr(cd.open_cnmf(syn.files["cnmf"]), tmp_path / "s.zarr", chunk_frames=8)
    assert_stores_identical(ref, out)
    assert {t["worker"] for t in ts.data} == set(_worker_jobs(client))  # both jobs worked
    # sharded (zarr v3) and zarr v2 stores
    kw = {"movies": ("residuals",), "chunk_frames": 4, "progress": False}
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "ls.zarr", shard_frames=12, **kw))
    assert_stores_identical(ref, cd.to_zarr(syn, tmp_path / "ss.zarr", shard_frames=12, **kw))
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "l2.zarr", zarr_format=2, **kw))
    assert_stores_identical(ref, cd.to_zarr(syn, tmp_path / "s2.zarr", zarr_format=2, **kw))


def test_projections_are_identical_on_slurm(slurm, syn):
    _, client = slurm
    path = syn.files["cnmf"]
    ref_m, m = cd.open_cnmf(path), cd.open_cnmf(path)
    movies = {"residuals": cd.residuals, "rcm": cd.rcm, "rcb": cd.rcb, "raw": cd.raw}
    for name, movie in movies.items():
        ref = _local(lambda movie=movie: cd.project(movie(ref_m), KINDS))
        got = cd.project(movie(m), KINDS)
        for k in KINDS:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} {k}")
    # through cd.scheduler(address), as the command line's --scheduler connects
    with cd.scheduler(client.scheduler.address):
        got = cd.project(cd.residuals(m), "std", frames=slice(3, 70))
    ref = _local(lambda: cd.project(cd.residuals(ref_m), "std", frames=slice(3, 70)))
    np.testing.assert_array_equal(got, ref)


def test_cli_export_on_slurm(slurm, syn, tmp_path):
    """``caiman-dask export --scheduler cluster.scheduler_address``: the jobs do the work."""
    cluster, client = slurm
    out = tmp_path / "cli.zarr"
    args = ["export", str(syn.files["cnmf"]), "--movie", str(syn.files["movie"]), "--quiet"]
    args += ["-o", str(out), "--scheduler", cluster.scheduler_address]
    with get_task_stream(client) as ts:
        proc = subprocess.run(
            [sys.executable, "-m", "caiman_dask._cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert f"running on {cluster.scheduler_address}" in proc.stdout
    assert {t["worker"] for t in ts.data} <= set(_worker_jobs(client)) and ts.data
    ref = _local(lambda: cd.to_zarr(syn, tmp_path / "local.zarr", progress=False))
    assert_stores_identical(ref, out)


def _markers(path: Path) -> int:
    return len(list((path / "_progress").rglob("c/*"))) if path.exists() else 0


class _Canceller(threading.Thread):
    """``scancel``s one job once ``ready()`` holds, while ``done`` is not set."""

    def __init__(self, job_id: str, ready):
        super().__init__(daemon=True)
        self.job_id, self.ready = job_id, ready
        self.done, self.cancelled_while_running, self.error = threading.Event(), False, None

    def run(self):
        try:
            deadline = time.time() + 120
            while not self.done.is_set() and time.time() < deadline:
                if self.ready():
                    subprocess.run(["scancel", self.job_id], check=True, timeout=20)
                    self.cancelled_while_running = not self.done.is_set()
                    return
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_cancelled_job_export_completes_byte_identical(slurm, mid, tmp_path):
    """One job does the export; ``scancel`` it mid-export: a new job finishes the store."""
    cluster, client = slurm
    ref = _local(lambda: cd.to_zarr(mid, tmp_path / "local.zarr", chunk_frames=10, progress=False))
    out = tmp_path / "cancelled.zarr"
    # a lost job is noticed after 1 s instead of 15 s (what the test waits for, not correctness)
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        cluster.adapt(minimum_jobs=1, maximum_jobs=1)  # one job: only a new job can finish
        try:
            _wait_for(
                lambda: len(client.scheduler_info()["workers"]) == 1 and len(_jobs()) == 1,
                "the cluster to scale down to 1 SLURM job",
            )
            (first,) = _worker_jobs(client).values()
            canceller = _Canceller(first, lambda: _markers(out) >= 10)
            canceller.start()
            try:
                with get_task_stream(client) as ts:
                    cd.to_zarr(
                        cd.open_cnmf(mid.files["cnmf"]), out, chunk_frames=10, progress=False
                    )
            finally:
                canceller.done.set()
                canceller.join()
            assert canceller.error is None and canceller.cancelled_while_running
            (second,) = _worker_jobs(client).values()
            assert second != first  # another job picked up ...
            assert _jobs().get(first) not in {"PENDING", "RUNNING"}  # SLURM ended the first
            assert len({t["worker"] for t in ts.data}) == 2  # both jobs' workers wrote chunks
        finally:
            cluster.adapt(minimum_jobs=2, maximum_jobs=2)
    assert cd.store_info(out)["complete"] is True
    assert_stores_identical(ref, out)
