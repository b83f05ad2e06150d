"""CNMF-E ring-model background and residuals: frame latency, slices, one-pass projections.

On a 1p-like synthetic of realistic size,
``cd.synthetic(dims=(600, 600), T=4000, K=300, seed=0, ring_ssub=2, ring_radius=9.0,
dtype=np.float32, path=...)`` (the model describes the background by CNMF-E's ring model
``B_t = b0 + U(W·(D·(Y_t − A·C_t) − D·b0))``; the movie is a 5.8 GB float32 memmap, written once
and reused), this prints

- the median latency of ``rcb[t]`` and ``res[t]`` (warm page cache), beside a plain copy of one
  movie frame ``np.array(Y_memmap[t])`` for scale;
- 100-frame slices ``rcb[t:t+100]`` / ``res[t:t+100]`` (frames/s);
- the one-pass projection of background and residuals together,
  ``cd.project([cd.rcb(m), cd.residuals(m)], ["mean", "std", "min", "max"])`` on a freshly
  opened model, as a ratio to one plain read of Y (``np.sum`` over a fresh ``np.memmap``, 256
  frames at a time, median of three reads interleaved with the passes; no madvise), and for
  reference the residuals alone;
- the peak RSS of the joint pass, measured in a child process that does only that pass
  (``ru_maxrss``, which on Linux counts the memmap pages the process touched, and sampled peaks
  of anonymous and file-backed resident memory);
- a single-threaded per-chunk breakdown: reading Y, ``A·C``, ring background, residuals,
  ``block_stats``.

The issue sets no numeric goals for the ring model; for orientation the 512×512 low-rank goals
are res[t] ≤ 1 ms, slices ≥ 5,000 frames/s, a pass ≤ 3× one read and peak RSS ≤ 1.5 GB. The
script reports; it always exits 0.

Usage::

    python benchmarks/bench_ring.py            # full size (writes ~5.8 GB once, reuses it)
    python benchmarks/bench_ring.py --quick    # 120×120, T=500, K=30
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    loadavg_line,
    machine_header,
    memory_summary,
    time_call,
    warm_page_cache,
)
from _projbench import (
    CHILD_PROLOGUE,
    GoalRow,
    fmt_ratio,
    fmt_s,
    plain_read,
    print_goal_table,
    run_measured_child,
    synthetic_model,
)

import caiman_dask as cd
from caiman_dask import _streaming

KINDS4 = ["mean", "std", "min", "max"]
SLICE = 100
READ_CHUNK = 256


@dataclass(frozen=True)
class RingSpec:
    """Arguments of the ring-model synthetic."""

    dims: tuple[int, int]
    T: int
    K: int
    seed: int = 0
    ring_ssub: int = 2
    ring_radius: float = 9.0

    @property
    def tag(self) -> str:
        return (
            f"synthetic_ring_{self.dims[0]}x{self.dims[1]}_T{self.T}_K{self.K}_seed{self.seed}"
            f"_ssub{self.ring_ssub}_r{self.ring_radius:g}_f32"
        )

    def kwargs(self) -> dict[str, Any]:
        return {
            "dims": self.dims,
            "T": self.T,
            "K": self.K,
            "seed": self.seed,
            "ring_ssub": self.ring_ssub,
            "ring_radius": float(self.ring_radius),
            "dtype": "float32",
        }


FULL = RingSpec(dims=(600, 600), T=4000, K=300)
QUICK = RingSpec(dims=(120, 120), T=500, K=30)


_JOINT_CHILD = (
    CHILD_PROLOGUE
    + """
m = cd.open_cnmf(a["h5"], movie=a["movie"])
before = _mem()
c0 = time.process_time()
t0 = time.perf_counter()
imgs = cd.project([cd.rcb(m), cd.residuals(m)], a["kinds"])
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "cpu": time.process_time() - c0, "before": before,
                  "after": _mem()}))
"""
)


def _frames_rows(m: Any, mmap: Path, budget_s: float) -> list[GoalRow]:
    """Latency of single frames and 100-frame slices (warm page cache)."""
    rcb = cd.rcb(m)
    res = cd.residuals(m)
    T = m.T
    P = math.prod(m.dims)
    rng = np.random.default_rng(12345)
    ts = [int(t) for t in rng.integers(0, T, size=400)]
    starts = [int(t) for t in rng.integers(0, T - SLICE + 1, size=400)]
    mm = np.memmap(mmap, np.float32, "r", shape=(T, P))

    def timed(fn: Any, args: list[int], reps: int) -> Any:
        return time_call(fn, args, min_reps=5, max_reps=reps, budget_s=budget_s)

    print("[frames] timing rcb[t], res[t], slices ...", flush=True)
    tr = {
        "rcb[t]": timed(lambda t: rcb[t], ts, 300),
        "res[t]": timed(lambda t: res[t], ts, 300),
        "Y[t]": timed(lambda t: np.array(mm[t]), ts, 300),
        "rcb[t:t+100]": timed(lambda t: rcb[t : t + SLICE], starts, 25),
        "res[t:t+100]": timed(lambda t: res[t : t + SLICE], starts, 25),
        "Y[t:t+100]": timed(lambda t: np.array(mm[t : t + SLICE]), starts, 25),
    }
    rows = []
    for op in ("rcb[t]", "res[t]"):
        o, y = tr[op], tr["Y[t]"]
        rows.append(
            GoalRow(
                f"{op} ({res.dtype}), median",
                f"{o.median_ms:.2f} ms (CPU {o.cpu_median_ms:.2f})",
                "copy of one movie frame np.array(Y[t])",
                f"{y.median_ms:.3f} ms",
                fmt_ratio(o.median, y.median),
            )
        )
    for op in ("rcb[t:t+100]", "res[t:t+100]"):
        o, y = tr[op], tr["Y[t:t+100]"]
        rows.append(
            GoalRow(
                f"{op}, median",
                f"{o.median_ms:,.0f} ms = {SLICE / o.median:,.0f} fr/s",
                "copy of 100 movie frames",
                f"{y.median_ms:.1f} ms = {SLICE / y.median:,.0f} fr/s",
                fmt_ratio(o.median, y.median),
            )
        )
    return rows


def _line(label: str, seconds: float) -> str:
    return f"{label.ljust(60)}{seconds:7.2f} s"


def _breakdown(h5: Path, mmap: Path, n_sample: int) -> list[str]:
    """Single-threaded per-chunk times of the pass's tasks (private helpers; diagnosis only)."""
    from caiman_dask._frame_kernels import frames
    from caiman_dask._graph import _movie_block
    from caiman_dask._index import full_crop
    from caiman_dask._ring import ring_frames

    m = cd.open_cnmf(h5, movie=mmap)
    rcb, res = cd.rcb(m), cd.residuals(m)
    chunks = res.time_chunks
    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(int)
    pick = np.unique(np.linspace(0, len(chunks) - 1, min(n_sample, len(chunks))).astype(int))
    full = full_crop(m.dims)
    opA = res._engine.ring.A  # A·C of all components, as the ring uses it
    ring = res._engine.ring.op
    rcb_op, res_op = rcb._engine.footprints(full), res._engine.footprints(full)
    C = np.asarray(m._host.C)
    P = math.prod(m.dims)
    dt = res.dtype
    keys = ("read", "ac", "ring", "rcb", "res", "stats", "fast")
    tot = dict.fromkeys(keys, 0.0)
    nfr = 0
    for i in pick:
        t0, t1 = int(starts[i]), int(starts[i] + chunks[i])
        n = t1 - t0
        ts = [time.perf_counter()]
        y = m.Y.blocks[int(i)].compute(scheduler="sync")  # read task
        ts.append(time.perf_counter())
        ac = np.empty((n, P), dt)
        frames(ac, opA, C[:, t0:t1].T)
        ac = ac.reshape((n, *m.dims))
        ts.append(time.perf_counter())
        ring_frames(ring, y, ac)
        ts.append(time.perf_counter())
        c = C[:, t0:t1]
        _movie_block(y, rcb_op, None, None, (ring, opA), c, plan=rcb._engine.plan)
        ts.append(time.perf_counter())
        blk = _movie_block(y, res_op, None, None, (ring, opA), c, c, plan=res._engine.plan)
        ts.append(time.perf_counter())
        _streaming.block_stats(blk, corr=False)
        ts.append(time.perf_counter())
        rcb[t0:t1]
        ts.append(time.perf_counter())
        for k, a, b in zip(keys, ts[:-1], ts[1:], strict=True):
            tot[k] += b - a
        nfr += n
    s = m.T / nfr
    return [
        f"per-chunk breakdown: {len(pick)} of {len(chunks)} time chunks of {chunks[0]} frames, "
        f"the tasks' work on one thread, extrapolated to all T={m.T} frames (sequential "
        f"seconds; the passes run dask's threaded scheduler on {os.cpu_count()} CPUs):",
        _line("  read task Y.blocks[i] (C-ordered float32 copy):", tot["read"] * s),
        _line("  A·C frames (frames kernel, fresh buffer):", tot["ac"] * s),
        _line("  ring_frames(ring, Y, A·C) alone:", tot["ring"] * s),
        _line("  rcb task (A·C + ring):", tot["rcb"] * s),
        _line("  residuals task (A·C + ring + Y − A·C − B):", tot["res"] * s),
        _line(f"  block_stats(corr=False) of one {dt} block:", tot["stats"] * s),
        _line("  for comparison, viewer fast path rcb[t0:t1]:", tot["fast"] * s),
        "  => the joint [rcb, residuals] pass runs both tasks per chunk (A·C and the ring "
        "twice) and block_stats twice.",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; always returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="120x120, T=500, K=30")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where the synthetic files are written / reused (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-chunk breakdown")
    p.add_argument("--budget", type=float, default=None, help="seconds per measured operation")
    args = p.parse_args(argv)
    spec = QUICK if args.quick else FULL
    budget = args.budget if args.budget is not None else (1.5 if args.quick else 3.0)

    print(
        machine_header(
            f"bench_ring: CNMF-E ring model {spec.dims[0]}x{spec.dims[1]}, T={spec.T}, "
            f"K={spec.K}, ring_ssub={spec.ring_ssub}, ring_radius={spec.ring_radius:g}, float32 "
            f"factors, seed={spec.seed}{' (--quick)' if args.quick else ''}"
        )
    )
    print(flush=True)
    m = synthetic_model(spec.kwargs(), args.data_dir / spec.tag)
    h5 = Path(m.files["cnmf"])
    mmap = Path(m.files["movie"])
    print(f"model: {m} (background: {m.background})")
    secs = warm_page_cache(mmap)
    gb = mmap.stat().st_size / 1e9
    print(
        f"page cache warmed: read {mmap.name} ({gb:.2f} GB) in {secs:.1f} s "
        f"({gb / max(secs, 1e-9):.1f} GB/s)"
    )
    print(
        "method: wall clock, median over up to 300 frames / 25 slices at random t after 2 "
        f"untimed calls (~{budget:g} s per operation); CPU = process CPU time (all threads); "
        "passes on a freshly opened model, dask's "
        "default threaded scheduler; ratios are ours / baseline.",
        flush=True,
    )
    t_start = time.perf_counter()

    rows = _frames_rows(m, mmap, budget)

    # one-off numba loading is not part of a pass
    wm = cd.open_cnmf(h5, movie=mmap)
    _streaming.block_stats(cd.residuals(wm)[0:2], corr=False)
    _streaming.block_stats(cd.rcb(wm)[0:2], corr=False)
    del wm

    T, P = m.T, math.prod(m.dims)
    reads: list[float] = []

    def read() -> None:
        dt, _ = plain_read(mmap, T, P, READ_CHUNK)
        reads.append(dt)
        print(f"[passes]   plain read of Y: {fmt_s(dt)}  ({loadavg_line()})", flush=True)

    print(
        "[passes] plain read / joint rcb+residuals pass / plain read / residuals alone / "
        "plain read ...",
        flush=True,
    )
    read()
    cd.forget_statistics()  # a fresh model: nothing cached
    m1 = cd.open_cnmf(h5, movie=mmap)
    c0 = time.process_time()
    t0 = time.perf_counter()
    joint = cd.project([cd.rcb(m1), cd.residuals(m1)], KINDS4)
    t_joint = time.perf_counter() - t0
    cpu_joint = time.process_time() - c0
    print(f"[passes]   joint pass: {fmt_s(t_joint)}", flush=True)
    read()
    cd.forget_statistics()
    m2 = cd.open_cnmf(h5, movie=mmap)
    c0 = time.process_time()
    t0 = time.perf_counter()
    alone = cd.project(cd.residuals(m2), KINDS4)
    t_res = time.perf_counter() - t0
    cpu_res = time.process_time() - c0
    print(f"[passes]   residuals alone: {fmt_s(t_res)}", flush=True)
    read()
    same = all(np.array_equal(joint[1][k], alone[k]) for k in KINDS4)
    del m1, m2, joint, alone
    rd = float(np.median(reads))
    rows += [
        GoalRow(
            "joint pass [rcb, residuals] x 4 images (fresh model)",
            f"{fmt_s(t_joint)} (CPU {fmt_s(cpu_joint)})",
            f"plain read of Y (np.sum, {READ_CHUNK}-frame chunks; median of 3)",
            fmt_s(rd),
            fmt_ratio(t_joint, rd),
        ),
        GoalRow(
            "residuals alone, 4 images (fresh model)",
            f"{fmt_s(t_res)} (CPU {fmt_s(cpu_res)})",
            "plain read of Y (same)",
            fmt_s(rd),
            fmt_ratio(t_res, rd),
        ),
    ]

    print("[passes] peak RSS of the joint pass, in a child process ...", flush=True)
    child = run_measured_child(_JOINT_CHILD, {"h5": str(h5), "movie": str(mmap), "kinds": KINDS4})
    rep = child.report
    hwm = rep["after"]["VmHWM"]
    rows += [
        GoalRow(
            "peak RSS, joint pass (child, VmHWM)",
            f"{hwm / 1e9:.2f} GB",
            "incl. memmap pages of Y touched (file-backed)",
        ),
        GoalRow(
            "  of which anonymous (sampled peak)",
            f"{child.peak_anon / 1e9:.2f} GB",
            "file-backed (memmap pages), sampled peak",
            f"{child.peak_file / 1e9:.2f} GB",
        ),
    ]
    notes = [
        f"residual images of the joint pass and of residuals alone identical: {same}",
        "plain reads: "
        + ", ".join(fmt_s(r) for r in reads)
        + f" ({P * T * 4 / 1e9 / rd:.1f} GB/s at the median)",
        f"peak RSS of the joint pass (child doing only open_cnmf + the pass; {child.samples} "
        f"samples every 50 ms): VmHWM {hwm / 1e9:.2f} GB; sampled peaks anonymous "
        f"{child.peak_anon / 1e9:.2f} GB, file-backed {child.peak_file / 1e9:.2f} GB (movie "
        "memmap pages touched + libraries). "
        f"Pass time in the child: {fmt_s(rep['seconds'])} (CPU {fmt_s(rep['cpu'])}). "
        "(Not ru_maxrss: Linux keeps it across execve and subprocess uses vfork, so a child's "
        "starts at the parent's peak.)",
    ]
    if not args.no_breakdown:
        print("[passes] per-chunk breakdown ...", flush=True)
        notes += _breakdown(h5, mmap, 12)

    print()
    print("=" * 100)
    print(
        f"bench_ring {spec.dims[0]}x{spec.dims[1]} T={spec.T} K={spec.K} ring_ssub="
        f"{spec.ring_ssub} ({'quick' if args.quick else 'full size'}); {loadavg_line()}"
    )
    print()
    print_goal_table(rows, "ring model (no numeric goals in the issue; see the docstring):")
    print()
    for n in notes:
        print(n)
    print()
    print(f"this process: {memory_summary()}")
    print(f"{loadavg_line()} at end; measuring took {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
