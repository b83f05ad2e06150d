"""Projection images (mean, std, min, max; corr) of caiman_dask against baselines, same run.

On the synthetic 512×512, T=8000, K=500 model of ``bench_frames.py`` (same files) this prints

- the time of all four RCM images, ``cd.project(cd.rcm(model), ["mean", "std", "min", "max"])``
  (on a fresh movie object each call, so nothing is cached), against
  - a dense float64 brute force: frames ``A @ C[:, t0:t1]`` materialised 200 at a time, exact
    per-pixel mean / M2 (Chan merging of centred chunks) / min / max; it is also the reference
    of the error table;
  - naive dask: ``dask.compute(d.mean(0), d.std(0), d.min(0), d.max(0))`` with ``d = rcm.data``;
  - mesmerize-core's ``LazyArrayRCM`` constructor, which computes its (approximate) images
    ``A·mean(C)``, ``A·std(C)``, ``A·min(C)``, ``A·max(C)``;
  and the same for the low-rank background RCB ``b·f``;
- the error table: max abs error, relative error (max abs err / max |exact|) and the number of
  wrong pixels (|err| > 1e-6 · max |exact|) of ours, naive dask and mesmerize-core against the
  brute force, for RCM and RCB;
- the residual pass ``cd.project(cd.residuals(model), [...])`` on a freshly opened model (cold:
  no cached statistics, movie pages mapped anew) as a ratio to one plain read of Y (``np.sum``
  over a fresh ``np.memmap`` of the movie, 256 frames at a time; median of three reads
  interleaved with the passes; no madvise), also with ``"corr"``;
- the peak RSS of the residual pass, measured in a child process that does only that pass
  (``ru_maxrss``, which on Linux counts the memmap pages the process touched, and the sampled
  peaks of anonymous and file-backed resident memory);
- a breakdown of the residual pass, single-threaded per time chunk: reading Y, computing the
  residual block, ``block_stats`` (with and without corr).

Goals (from the issue): RCM images ≥ 15× faster than the brute force with max relative error
≤ 1e-10; residual pass ≤ 3× one plain read; peak RSS ≤ 1.5 GB. The script reports; it always
exits 0.

Usage::

    python benchmarks/bench_projections.py            # full size (reuses bench_frames' data)
    python benchmarks/bench_projections.py --quick    # 128×128, T=1000, K=60
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    FULL,
    QUICK,
    MesmerizeUnavailable,
    benchmark_model,
    load_mesmerize_cnmf_arrays,
    loadavg_line,
    machine_header,
    memory_summary,
    mesmerize_version,
    read_caiman_hdf5,
    time_call,
    warm_page_cache,
)
from _projbench import (
    CHILD_PROLOGUE,
    GoalRow,
    ImageError,
    compare_images,
    fmt_ratio,
    fmt_s,
    plain_read,
    print_error_table,
    print_goal_table,
    run_measured_child,
)

import caiman_dask as cd
from caiman_dask import _streaming

KINDS4 = ["mean", "std", "min", "max"]
BRUTE_CHUNK = 200
READ_CHUNK = 256

#: Goals from the issue.
SPEEDUP_GOAL = 15.0
REL_ERR_GOAL = 1e-10
PASS_RATIO_GOAL = 3.0
#: Issue 15: the residual pass with the correlation image's neighbour co-moments.
CORR_RATIO_GOAL = 4.0
RSS_GOAL_BYTES = 1.5e9


# ---------------------------------------------------------------------------------------------
# Brute force (the reference)
# ---------------------------------------------------------------------------------------------


def brute_force(
    S: scipy.sparse.spmatrix | np.ndarray, X: np.ndarray, dims: tuple[int, ...], chunk: int
) -> dict[str, np.ndarray]:
    """Exact mean / std / min / max of the dense movie ``S @ X`` (pixels in Fortran order).

    Frames are materialised ``chunk`` at a time as a dense float64 ``(P, chunk)`` array; each
    chunk is centred on its own mean and merged exactly (Chan et al.), so the result is exact
    up to float64 rounding. Images are returned shaped ``dims`` (``img[i, j]`` = pixel (i, j)).
    """
    S = scipy.sparse.csr_matrix(S, dtype=np.float64) if scipy.sparse.issparse(S) else S
    X = np.asarray(X, np.float64)
    P, T = S.shape[0], X.shape[1]
    n = 0
    mean = np.zeros(P)
    m2 = np.zeros(P)
    lo = np.full(P, np.inf)
    hi = np.full(P, -np.inf)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        Y = np.asarray(S @ np.ascontiguousarray(X[:, t0:t1]), dtype=np.float64)  # (P, nb) dense
        nb = t1 - t0
        bmean = Y.mean(axis=1)
        Y -= bmean[:, None]
        bm2 = np.einsum("ij,ij->i", Y, Y)
        Y += bmean[:, None]
        np.minimum(lo, Y.min(axis=1), out=lo)
        np.maximum(hi, Y.max(axis=1), out=hi)
        if n == 0:
            mean, m2 = bmean, bm2
        else:
            tot = n + nb
            delta = bmean - mean
            mean = mean + delta * (nb / tot)
            m2 = m2 + bm2 + delta * delta * (n * nb / tot)
        n += nb
        del Y
    out = {"mean": mean, "std": np.sqrt(m2 / n), "min": lo, "max": hi}
    return {k: np.reshape(v, dims, order="F") for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _med(fn: Any, reps: int, budget_s: float) -> float:
    """Median seconds of ``fn()`` over up to ``reps`` calls (1 untimed warm-up)."""
    return time_call(
        lambda _: fn(), [None], min_reps=min(3, reps), max_reps=reps, budget_s=budget_s, warmup=1
    ).median


def structured_section(
    name: str,
    make_movie: Any,
    factor: Any,
    traces: np.ndarray,
    dims: tuple[int, ...],
    mz_cls: Any,
    mz_reason: str,
    *,
    naive: tuple[Path, Path] | None,
    reps: int,
) -> tuple[list[GoalRow], list[tuple[str, str, str, ImageError]], dict[str, float]]:
    """Time and check the four images of one structured movie (RCM or RCB)."""
    out_times: dict[str, float] = {}
    print(
        f"[{name}] first call of ours (fresh movie; includes one-off JIT / factor loading) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    cd.forget_statistics()  # (statistics are cached by what a movie is made of)
    first = cd.project(make_movie(), KINDS4)
    out_times["ours_first"] = time.perf_counter() - t0
    print(f"[{name}]   {fmt_s(out_times['ours_first'])}; timing ours ...", flush=True)
    out_times["ours"] = _med(
        lambda: (cd.forget_statistics(), cd.project(make_movie(), KINDS4))[1], reps, 20.0
    )
    print(
        f"[{name}]   median {fmt_s(out_times['ours'])}; brute force (dense float64, "
        f"{BRUTE_CHUNK}-frame chunks) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    exact = brute_force(factor, traces, dims, BRUTE_CHUNK)
    out_times["brute"] = time.perf_counter() - t0
    print(f"[{name}]   {fmt_s(out_times['brute'])}", flush=True)

    naive_imgs = None
    if naive:
        print(
            f"[{name}] naive dask: dask.compute(d.mean(0), d.std(0), d.min(0), d.max(0)) ...",
            flush=True,
        )
        # in a child process: it can hold many blocks at once; we report its peak RSS
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "naive.npz"
            child = run_measured_child(
                _NAIVE_CHILD, {"h5": str(naive[0]), "movie": str(naive[1]), "out": str(out)}
            )
            with np.load(out) as z:
                naive_imgs = {k: z[k] for k in KINDS4}
        out_times["naive"] = child.report["seconds"]
        out_times["naive_hwm"] = child.report["after"]["VmHWM"]
        out_times["naive_anon"] = child.peak_anon
        print(
            f"[{name}]   {fmt_s(out_times['naive'])}; peak RSS (VmHWM) "
            f"{out_times['naive_hwm'] / 1e9:.2f} GB",
            flush=True,
        )

    mz_imgs = None
    if mz_cls is not None:
        print(
            f"[{name}] mesmerize-core {mz_cls.__name__} constructor (computes its images) ...",
            flush=True,
        )
        t0 = time.perf_counter()
        lazy = mz_cls(spatial=factor, temporal=traces, frame_dims=dims)
        out_times["mz"] = time.perf_counter() - t0
        mz_imgs = {
            "mean": lazy.mean_image,
            "std": lazy.std_image,
            "min": lazy.min_image,
            "max": lazy.max_image,
        }
        print(f"[{name}]   {fmt_s(out_times['mz'])}", flush=True)

    errs: list[tuple[str, str, str, ImageError]] = []
    ours_rel = 0.0
    for k in KINDS4:
        e = compare_images(first[k], exact[k])
        ours_rel = max(ours_rel, e.rel)
        errs.append((name, k, "ours (cd.project)", e))
        if mz_imgs is not None:
            errs.append((name, k, "mesmerize-core", compare_images(mz_imgs[k], exact[k])))
        if naive_imgs is not None:
            errs.append((name, k, "naive dask", compare_images(naive_imgs[k], exact[k])))

    o = out_times["ours"]
    rows = [
        GoalRow(
            f"{name}: 4 images (cd.project, fresh movie)",
            fmt_s(o),
            f"dense float64 brute force, {BRUTE_CHUNK}-frame chunks",
            fmt_s(out_times["brute"]),
            fmt_ratio(o, out_times["brute"]),
            f">= {SPEEDUP_GOAL:g}x faster" if name == "RCM" else "",
            (out_times["brute"] / o >= SPEEDUP_GOAL) if name == "RCM" else None,
        )
    ]
    if "naive" in out_times:
        rows.append(
            GoalRow(
                "",
                "",
                "naive dask compute(mean,std,min,max) of .data",
                fmt_s(out_times["naive"]),
                fmt_ratio(o, out_times["naive"]),
                continued=True,
            )
        )
        rows.append(
            GoalRow(
                "",
                "",
                "  (naive dask: its peak RSS, VmHWM of its child)",
                f"{out_times['naive_hwm'] / 1e9:.2f} GB",
                continued=True,
            )
        )
    if "mz" in out_times:
        rows.append(
            GoalRow(
                "",
                "",
                f"mesmerize {mz_cls.__name__}() (approx. images)",
                fmt_s(out_times["mz"]),
                fmt_ratio(o, out_times["mz"]),
                continued=True,
            )
        )
    elif mz_reason:
        rows.append(
            GoalRow("", "", "mesmerize-core", f"unavailable: {mz_reason[:40]}", continued=True)
        )
    rows.append(
        GoalRow(
            "",
            "",
            "(first call: one-off JIT / factor loading)",
            fmt_s(out_times["ours_first"]),
            continued=True,
        )
    )
    rows.append(
        GoalRow(
            f"{name}: max rel error of ours (4 images)",
            f"{ours_rel:.1e}",
            "vs the brute force",
            "",
            "",
            f"<= {REL_ERR_GOAL:g}",
            ours_rel <= REL_ERR_GOAL,
        )
    )
    return rows, errs, out_times


_RESIDUAL_CHILD = (
    CHILD_PROLOGUE
    + """
m = cd.open_cnmf(a["h5"], movie=a["movie"])
before = _mem()
c0 = time.process_time()
t0 = time.perf_counter()
img = cd.project(cd.residuals(m), a["kinds"])
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "cpu": time.process_time() - c0, "before": before,
                  "after": _mem(), "check": float(np.nansum(img["mean"]))}))
"""
)

_NAIVE_CHILD = (
    CHILD_PROLOGUE
    + """
import dask
m = cd.open_cnmf(a["h5"], movie=a["movie"])
d = cd.rcm(m).data
before = _mem()
c0 = time.process_time()
t0 = time.perf_counter()
res = dask.compute(d.mean(0), d.std(0), d.min(0), d.max(0))
dt = time.perf_counter() - t0
np.savez(a["out"], **dict(zip(["mean", "std", "min", "max"], res)))
print(json.dumps({"seconds": dt, "cpu": time.process_time() - c0, "before": before,
                  "after": _mem()}))
"""
)


def _line(label: str, seconds: float) -> str:
    return f"{label.ljust(60)}{seconds:7.2f} s"


def residual_breakdown(h5: Path, mmap: Path, n_sample: int) -> list[str]:
    """Single-threaded per-chunk times of the tasks of the residual pass (sampled chunks).

    Calls what the dask tasks call (``Y.blocks[i]``, the residual block function with the
    movie's prepared operators, ``block_stats``); uses private helpers, for diagnosis only.
    """
    from caiman_dask._frame_kernels import frames
    from caiman_dask._graph import _movie_block, background_op, footprint_op
    from caiman_dask._index import full_crop
    from caiman_dask._moment_kernels import prepare_moments
    from caiman_dask._statistics import _residual_block_moments

    m = cd.open_cnmf(h5, movie=mmap)
    res = cd.residuals(m)
    chunks = res.time_chunks
    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(int)
    pick = np.unique(np.linspace(0, len(chunks) - 1, min(n_sample, len(chunks))).astype(int))
    full = full_crop(m.dims)
    opA = res._engine.footprints(full)  # (the kernel's sign: Y − (b·f + A·C))
    opB = res._engine.background(full)
    plan = res._engine.plan
    C = np.asarray(m._host.C)
    f = None if m._host.f is None else np.asarray(m._host.f)
    P = math.prod(m.dims)
    buf = np.empty((max(chunks), P), res.dtype)
    _streaming.block_stats(np.zeros((2, *m.dims)), corr=True)  # JIT (cached on disk)

    def op(arr: Any) -> Any:
        return arr.to_delayed().ravel()[0].compute(scheduler="sync")

    # the fused pass's operators, in both pixel orders (as its tasks get them)
    desc = res.description
    mops = []
    for o in ("C", "F"):
        b_op = background_op(desc, res.dtype, o)
        a_op = op(footprint_op(desc, res.dtype, o))
        mops.append(prepare_moments(a_op, None if b_op is None else op(b_op)))
    views = m.movie_source.views  # CaImAn memmap: zero-copy blocks
    if views is not None:  # load the compiled kernel outside the timings
        fb0 = None if f is None else f[:, :1]
        _residual_block_moments(views[0:1], *mops, [C[:, :1]], fb0, dims=m.dims)
    keys = ("read", "block", "kernel", "stats", "statsc", "fast", "fused")
    tot = dict.fromkeys(keys, 0.0)
    nfr = 0
    for i in pick:
        t0, t1 = int(starts[i]), int(starts[i] + chunks[i])
        n = t1 - t0
        ts = [time.perf_counter()]
        y = m.Y.blocks[int(i)].compute(scheduler="sync")  # the read task (C-ordered float32)
        ts.append(time.perf_counter())
        fb = None if f is None else f[:, t0:t1]
        blk = _movie_block(y, opA, opB, fb, None, None, C[:, t0:t1], plan=plan)  # the task
        ts.append(time.perf_counter())
        frames(buf[:n], opA, C[:, t0:t1].T, opB, None if f is None else f[:, t0:t1].T, y)
        ts.append(time.perf_counter())
        _streaming.block_stats(blk, corr=False)
        ts.append(time.perf_counter())
        _streaming.block_stats(blk, corr=True)
        ts.append(time.perf_counter())
        res[t0:t1]  # the viewer fast path (reads the Fortran-ordered frames directly)
        ts.append(time.perf_counter())
        if views is not None:  # the fused pass on the file's own view of the chunk
            _residual_block_moments(views[t0:t1], *mops, [C[:, t0:t1]], fb, dims=m.dims)
        ts.append(time.perf_counter())
        for k, a, b in zip(keys, ts[:-1], ts[1:], strict=True):
            tot[k] += b - a
        nfr += n
        del y, blk
    s = m.T / nfr  # extrapolate to the whole movie
    return [
        f"residual pass breakdown: {len(pick)} of {len(chunks)} time chunks of "
        f"{chunks[0]} frames, the tasks' work run on one thread, extrapolated to all T={m.T} "
        f"frames (sequential seconds; the pass runs dask's threaded scheduler on "
        f"{os.cpu_count()} CPUs, so ~half of the sum is its wall time on an idle machine):",
        _line("  read task Y.blocks[i] (memmap -> C-ordered float32 copy):", tot["read"] * s),
        _line(f"  residual task (fresh {res.dtype} block Y - A·C - b·f):", tot["block"] * s),
        _line("    of which the kernel alone, into a reused buffer:", tot["kernel"] * s),
        f"    (the rest: allocating + first-touching a fresh "
        f"{res.dtype.itemsize * P * chunks[0] / 2**20:.0f} MiB block per chunk)",
        _line("  block_stats(corr=False):", tot["stats"] * s),
        _line("  block_stats(corr=True):", tot["statsc"] * s),
        _line("  for comparison, viewer fast path res[t0:t1] (transposes Y):", tot["fast"] * s),
        _line(
            "  the fused pass's work (cd.project without corr: the kernel on the file's own "
            "view, one chunk per call; the pass folds 8 chunks per task, amortising the "
            "per-call fresh accumulators and reordered statistics):",
            tot["fused"] * s,
        ),
    ]


def residual_section(
    h5: Path, mmap: Path, T: int, dims: tuple[int, ...], breakdown: bool
) -> tuple[list[GoalRow], list[str]]:
    """Residual pass vs plain reads (same process), then its peak RSS in a child."""
    P = math.prod(dims)
    notes: list[str] = []
    reads: list[float] = []

    def read() -> None:
        dt, _ = plain_read(mmap, T, P, READ_CHUNK)
        reads.append(dt)
        print(f"[residuals]   plain read of Y: {fmt_s(dt)}  ({loadavg_line()})", flush=True)

    # one-off numba loading (on-disk JIT cache) is not part of a pass: warm the kernels first
    warm = cd.open_cnmf(h5, movie=mmap)
    warm_res = cd.residuals(warm)
    for corr in (False, True):
        _streaming.block_stats(warm_res[0:2], corr=corr)
        _streaming.block_stats(warm_res[0:2].astype(np.float32), corr=corr)
    del warm, warm_res
    print(
        "[residuals] plain read / residual pass / plain read / pass + corr / plain read ...",
        flush=True,
    )
    read()
    cd.forget_statistics()  # a fresh model: nothing cached
    m1 = cd.open_cnmf(h5, movie=mmap)
    c0 = time.process_time()
    t0 = time.perf_counter()
    img = cd.project(cd.residuals(m1), KINDS4)
    t_pass = time.perf_counter() - t0
    cpu_pass = time.process_time() - c0
    print(f"[residuals]   residual pass (mean,std,min,max): {fmt_s(t_pass)}", flush=True)
    read()
    cd.forget_statistics()
    m2 = cd.open_cnmf(h5, movie=mmap)
    c0 = time.process_time()
    t0 = time.perf_counter()
    img_c = cd.project(cd.residuals(m2), [*KINDS4, "corr"])
    t_corr = time.perf_counter() - t0
    cpu_corr = time.process_time() - c0
    print(f"[residuals]   residual pass + corr: {fmt_s(t_corr)}", flush=True)
    read()

    # the two passes sum in different orders (fused kernel vs block statistics and merges)
    diffs = {k: compare_images(img[k], img_c[k]).rel for k in KINDS4}
    notes.append(
        "residual images with and without corr (two different passes), max |diff| / max |value|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    )
    del m1, m2, img, img_c

    print("[residuals] peak RSS of the residual pass, in a child process ...", flush=True)
    child = run_measured_child(
        _RESIDUAL_CHILD, {"h5": str(h5), "movie": str(mmap), "kinds": KINDS4}
    )
    rep = child.report
    hwm = rep["after"]["VmHWM"]
    gb = 1e9
    notes.append(
        f"peak RSS of the residual pass (child process doing only open_cnmf + the pass; "
        f"{child.samples} samples of /proc/<pid>/status every 50 ms): VmHWM "
        f"{hwm / gb:.2f} GB; sampled peaks: anonymous {child.peak_anon / gb:.2f} GB, file-backed "
        f"{child.peak_file / gb:.2f} GB (the movie memmap pages it touched, which stay mapped "
        "while the model is open, plus shared libraries; sampling can miss short peaks). "
        f"Before the pass: anon {rep['before'].get('RssAnon', 0) / gb:.2f} GB, "
        f"file {rep['before'].get('RssFile', 0) / gb:.2f} GB. "
        f"Pass time in the child: {fmt_s(rep['seconds'])} (process CPU {fmt_s(rep['cpu'])}). "
        f"(The child's ru_maxrss, {rep['after']['ru_maxrss'] / gb:.2f} GB, is not used: Linux "
        "keeps ru_maxrss across execve and subprocess starts children with vfork, so it starts "
        "at the parent's peak.)"
    )

    rd = float(np.median(reads))
    rows = [
        GoalRow(
            "residual pass mean,std,min,max (fresh model)",
            f"{fmt_s(t_pass)} (CPU {fmt_s(cpu_pass)})",
            f"plain read of Y (np.sum, {READ_CHUNK}-frame chunks; median of 3)",
            fmt_s(rd),
            fmt_ratio(t_pass, rd),
            f"<= {PASS_RATIO_GOAL:g}x",
            t_pass <= PASS_RATIO_GOAL * rd,
        ),
        GoalRow(
            "residual pass + corr (fresh model)",
            f"{fmt_s(t_corr)} (CPU {fmt_s(cpu_corr)})",
            "plain read of Y (same)",
            fmt_s(rd),
            fmt_ratio(t_corr, rd),
            f"<= {CORR_RATIO_GOAL:g}x",
            t_corr <= CORR_RATIO_GOAL * rd,
        ),
        GoalRow(
            "peak RSS, residual pass (child, VmHWM)",
            f"{hwm / gb:.2f} GB",
            "incl. memmap pages of Y touched (file-backed)",
            "",
            "",
            f"<= {RSS_GOAL_BYTES / gb:g} GB",
            hwm <= RSS_GOAL_BYTES,
        ),
        GoalRow(
            "  of which anonymous (sampled peak)",
            f"{child.peak_anon / gb:.2f} GB",
            "file-backed (memmap pages), sampled peak",
            f"{child.peak_file / gb:.2f} GB",
            "",
            f"<= {RSS_GOAL_BYTES / gb:g} GB",
            child.peak_anon <= RSS_GOAL_BYTES,
        ),
    ]
    notes.append(
        "plain reads: "
        + ", ".join(fmt_s(r) for r in reads)
        + f" ({P * T * 4 / 1e9 / rd:.1f} GB/s at the median)"
    )
    if breakdown:
        print("[residuals] per-chunk breakdown ...", flush=True)
        notes.extend(residual_breakdown(h5, mmap, 16))
    return rows, notes


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; always returns 0 (benchmarks report, they do not assert)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128x128, T=1000, K=60")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where the synthetic CaImAn files are written / reused (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--no-naive", action="store_true", help="skip the naive dask baseline")
    p.add_argument("--no-breakdown", action="store_true", help="skip the residual breakdown")
    args = p.parse_args(argv)

    spec = QUICK if args.quick else FULL
    print(
        machine_header(
            f"bench_projections: {spec.dims[0]}x{spec.dims[1]}, T={spec.T}, K={spec.K}, nb=2, "
            f"seed={spec.seed}{' (--quick)' if args.quick else ''}"
        )
    )
    print(f"  mesmerize-core {mesmerize_version()} (arrays/_cnmf.py loaded without its package)")
    print(flush=True)

    model = benchmark_model(spec, args.data_dir)
    h5 = Path(model.files["cnmf"])
    mmap = Path(model.files["movie"])
    print(f"model: {model}")
    secs = warm_page_cache(mmap)
    print(
        f"page cache warmed: read {mmap.name} ({mmap.stat().st_size / 1e9:.2f} GB) through once "
        f"in {secs:.1f} s ({mmap.stat().st_size / 1e9 / max(secs, 1e-9):.1f} GB/s)"
    )
    factors = read_caiman_hdf5(h5)
    dims = tuple(factors["dims"])
    A = factors["A"]  # CSC, Fortran pixel rows, as CaImAn / mesmerize-core load it
    print(f"A: {A.nnz:,} non-zeros ({A.nnz / model.K:.0f} px per footprint)", flush=True)
    mz_reason = ""
    try:
        mz = load_mesmerize_cnmf_arrays()
    except MesmerizeUnavailable as exc:
        mz, mz_reason = None, str(exc)
        print(f"mesmerize-core unavailable: {mz_reason}")
    print(
        "method: wall clock (CPU = process CPU time, all threads); ours = median of up to 5 "
        "calls on a fresh cd.rcm / cd.rcb movie "
        "(after one untimed call); brute force, naive dask and mesmerize-core timed once; "
        "dask's default threaded scheduler. Ratios are ours / baseline."
    )
    print(flush=True)
    t_start = time.perf_counter()

    reps = 5
    rcm_rows, rcm_errs, _ = structured_section(
        "RCM",
        lambda: cd.rcm(model),
        A,
        factors["C"],
        dims,
        None if mz is None else mz.LazyArrayRCM,
        mz_reason,
        naive=None if args.no_naive else (h5, mmap),
        reps=reps,
    )
    rcb_rows, rcb_errs, _ = structured_section(
        "RCB",
        lambda: cd.rcb(model),
        np.asarray(factors["b"]),
        np.asarray(factors["f"]),
        dims,
        None if mz is None else mz.LazyArrayRCB,
        mz_reason,
        naive=None,
        reps=reps,
    )
    res_rows, res_notes = residual_section(h5, mmap, model.T, dims, not args.no_breakdown)

    print()
    print("=" * 100)
    print(
        f"bench_projections {spec.dims[0]}x{spec.dims[1]} T={spec.T} K={spec.K} "
        f"({'quick' if args.quick else 'full size'}); {loadavg_line()}"
    )
    print()
    all_rows = rcm_rows + rcb_rows + res_rows
    print_goal_table(all_rows, "timings, errors and memory against goals:")
    print()
    print_error_table(
        rcm_errs + rcb_errs,
        "errors against the dense float64 brute force (wrong px: |err| > 1e-6 * max|exact|):",
    )
    print()
    for n in res_notes:
        print(n)
    print()
    print("goals:")
    for r in all_rows:
        if r.met is not None:
            print(
                f"  [{'MET' if r.met else 'MISSED'}] {r.operation.strip()}: {r.goal} "
                f"(ours {r.ours}{', ' + r.ratio if r.ratio else ''})"
            )
    print()
    print(f"this process: {memory_summary()}")
    print(
        "  (includes the brute force's dense chunks and the plain reads' memmap pages; the "
        "residual pass's own peak is the child's, above)"
    )
    print(f"{loadavg_line()} at end; measuring took {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
