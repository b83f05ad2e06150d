"""Scaling in T: time and peak memory of the streaming operations as the movie gets longer.

On the synthetic 512×512, K=500 model of ``bench_frames.py`` (same files: T=8000, reused, never
regenerated) this builds models of T = T0, 2·T0, 4·T0, 8·T0 frames (T0 = 1000) by slicing the
opened model in time — ``cd.from_arrays(m.A, m.C[:, :T], b=m.b, f=m.f[:, :T], Y=m.Y[:T])``;
dask slicing stays lazy and file-backed, so the shorter models read the first T frames of the
same memmap — and for each T measures, each in a fresh child process (so every peak is the
peak of that one run):

- the residual pass ``cd.project(cd.residuals(m), ["mean", "std", "min", "max"])``;
- the RCM export ``cd.to_zarr(m, tmp, movies=("rcm",), projections=(), progress=False)``
  (zstd, the movie's float64 frames, plus the factors), into a temporary directory;
- the exact RCM projections ``cd.project(cd.rcm(m), ["mean", "std", "min", "max"])``;
- the same-run baseline: one plain read of ``Y[:T]`` (``np.sum`` over a fresh ``np.memmap``,
  256 frames at a time; no madvise), also in a child.

Each child builds its model, runs the operation once on a 2-chunk model first (untimed: loads
the numba kernels from the on-disk cache, imports zarr's codecs), then times one run on a
freshly built T-frame model. Memory is the child's ``VmHWM`` (peak resident set of its own
address space: anonymous memory plus file-backed pages it had mapped) and the sampled peak of
``RssAnon`` (every 50 ms; short peaks can be missed). Not ``ru_maxrss``: Linux keeps it across
``execve`` and ``subprocess`` starts children with ``vfork``, so a child's starts at the
parent's peak.

Printed per operation and T: wall time, time per frame, the time ratio to T0 (linear scaling:
equal to T / T0), the ratio to the plain read of the same frames, and the peaks; then whether
memory stayed flat (goal: max / min of the VmHWM over the four T ≤ 1.3, for each of our three
operations). The plain read's own VmHWM grows with T on purpose: an ``np.memmap`` keeps every
page it touched mapped — it is shown for contrast, not judged. The script reports; it always
exits 0.

``--quick`` uses a 128×128, K=60, T=2000 synthetic of its own (0.13 GB, written once) and
64-frame dask chunks (the default, ~512 frames there, would leave T0=250 a single chunk: fewer
chunks than threads, so a lower peak for that reason alone). Full size uses the default chunks.

Usage::

    python benchmarks/bench_scaling.py            # 512×512, K=500, T = 1000 … 8000
    python benchmarks/bench_scaling.py --quick    # 128×128, K=60, T = 250 … 2000
    python benchmarks/bench_scaling.py --ops read residuals   # a subset of the operations
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    FULL,
    ModelSpec,
    benchmark_model,
    loadavg_line,
    machine_header,
    memory_summary,
    warm_page_cache,
)
from _projbench import CHILD_PROLOGUE, fmt_s, run_measured_child

#: FULL (the dataset of bench_frames / bench_projections, T=8000) is sliced to T0 … 8·T0.
FULL_T0 = 1000
#: A small dataset of its own (the quick dataset of the others has only T=1000).
QUICK = ModelSpec(dims=(128, 128), T=2000, K=60, seed=0)
QUICK_T0 = 250
#: Frames per dask chunk of Y for --quick: the default (~64 MiB, 512 frames at 128×128) would
#: give T0=250 a single chunk, so the smaller T's would run fewer chunks than there are threads
#: and their peak would be lower for that reason alone. Full size uses the default chunks.
QUICK_FRAME_CHUNK = 64
DOUBLINGS = 3
READ_CHUNK = 256
#: Goal: peak memory flat in T (max / min of the VmHWM over the T's).
FLAT_GOAL = 1.3

OPS: dict[str, str] = {
    "read": f"plain read of Y[:T] (np.sum, {READ_CHUNK}-frame chunks; baseline)",
    "residuals": "residual pass cd.project(residuals, mean,std,min,max)",
    "rcm_zarr": "RCM export cd.to_zarr(movies=('rcm',), projections=())",
    "rcm_proj": "RCM exact projections cd.project(rcm, mean,std,min,max)",
}

_CHILD = (
    CHILD_PROLOGUE
    + """
import math, tempfile
KINDS = ["mean", "std", "min", "max"]
op, T = a["op"], a["T"]

def sliced(T):
    m = cd.open_cnmf(a["h5"], movie=a["movie"], frame_chunk=a["frame_chunk"])
    return cd.from_arrays(
        m.A, m.C[:, :T], dims=m.dims, b=m.b, f=None if m.f is None else m.f[:, :T],
        Y=m.Y[:T], idx_components=m.idx_components, idx_components_bad=m.idx_components_bad,
    )

def plain_read(T):
    P = math.prod(a["dims"])
    mm = np.memmap(a["movie"], np.float32, "r", shape=(T, P))
    s = 0.0
    for t in range(0, T, a["read_chunk"]):
        s += float(np.sum(mm[t : t + a["read_chunk"]]))
    return s

def run(m, store):
    if op == "residuals":
        return float(np.nansum(cd.project(cd.residuals(m), KINDS)["mean"]))
    if op == "rcm_proj":
        return float(np.nansum(cd.project(cd.rcm(m), KINDS)["mean"]))
    if op == "rcm_zarr":
        return cd.to_zarr(m, store, movies=("rcm",), projections=(), progress=False)
    raise ValueError(op)

with tempfile.TemporaryDirectory(dir=a["tmp_dir"]) as tmp:
    if op == "read":
        before = _mem()
        c0, t0 = time.process_time(), time.perf_counter()
        check = plain_read(T)
    else:
        warm = sliced(T)
        warm_T = min(T, 2 * int(warm.Y.chunks[0][0]))
        del warm
        run(sliced(warm_T), Path(tmp) / "warm.zarr")  # untimed: numba cache, zarr codecs
        m = sliced(T)
        before = _mem()
        c0, t0 = time.process_time(), time.perf_counter()
        check = run(m, Path(tmp) / "rcm.zarr")
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if op == "rcm_zarr":  # the store's size on disk, after the clock stopped
        check = sum(p.stat().st_size for p in Path(check).rglob("*") if p.is_file())
print(json.dumps({"seconds": dt, "cpu": cpu, "before": before, "after": _mem(),
                  "check": check}))
"""
)


@dataclass
class Result:
    """One measured child: operation, T, seconds and memory (bytes)."""

    op: str
    T: int
    seconds: float
    cpu: float
    hwm: int
    anon_peak: int
    anon_before: int
    check: float


def measure(
    op: str,
    T: int,
    h5: Path,
    mmap: Path,
    dims: tuple[int, ...],
    tmp_dir: str | None,
    frame_chunk: int | None,
) -> Result:
    """Run ``op`` on the first ``T`` frames in a fresh child process."""
    child = run_measured_child(
        _CHILD,
        {
            "op": op,
            "T": T,
            "h5": str(h5),
            "movie": str(mmap),
            "dims": list(dims),
            "read_chunk": READ_CHUNK,
            "tmp_dir": tmp_dir,
            "frame_chunk": frame_chunk,
        },
    )
    rep = child.report
    return Result(
        op=op,
        T=T,
        seconds=rep["seconds"],
        cpu=rep["cpu"],
        hwm=rep["after"]["VmHWM"],
        anon_peak=max(child.peak_anon, rep["after"].get("RssAnon", 0)),
        anon_before=rep["before"].get("RssAnon", 0),
        check=float(rep["check"]),
    )


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def print_rows(header: tuple[str, ...], lines: list[tuple[str, ...]], right: set[int]) -> None:
    """A plain-text table with aligned columns."""
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for x in lines:
        print(fmt(x))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; always returns 0 (benchmarks report, they do not assert)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128x128, K=60, T = 250 … 2000")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where the synthetic CaImAn files are written / reused (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--tmp-dir",
        default=None,
        help="where the children write their temporary zarr stores (default: the system's)",
    )
    p.add_argument(
        "--ops",
        nargs="+",
        choices=list(OPS),
        default=list(OPS),
        help="operations to measure (default: all)",
    )
    args = p.parse_args(argv)

    spec, T0 = (QUICK, QUICK_T0) if args.quick else (FULL, FULL_T0)
    frame_chunk = QUICK_FRAME_CHUNK if args.quick else None
    Ts = [T0 * 2**i for i in range(DOUBLINGS + 1)]
    if Ts[-1] > spec.T:
        raise SystemExit(f"the dataset has T={spec.T} < {Ts[-1]}")
    print(
        machine_header(
            f"bench_scaling: {spec.dims[0]}x{spec.dims[1]}, K={spec.K}, nb=2, seed={spec.seed}, "
            f"T = {', '.join(map(str, Ts))} (slices of the T={spec.T} dataset)"
            f"{' (--quick)' if args.quick else ''}"
        )
    )
    print(flush=True)
    model = benchmark_model(spec, args.data_dir)
    h5 = Path(model.files["cnmf"])
    mmap = Path(model.files["movie"])
    dims = tuple(model.dims)
    print(f"model: {model}")
    print(
        f"movie chunks: {frame_chunk or model.Y.chunks[0][0]} frames per dask chunk"
        f"{' (set for --quick; default ' + str(model.Y.chunks[0][0]) + ')' if frame_chunk else ''}"
    )
    gb = mmap.stat().st_size / 1e9
    secs = warm_page_cache(mmap)
    print(
        f"page cache warmed: read {mmap.name} ({gb:.2f} GB) through once in {secs:.1f} s "
        f"({gb / max(secs, 1e-9):.1f} GB/s)"
    )
    print(
        "method: each (operation, T) in a fresh child process: build the T-frame model by "
        "slicing the opened one (lazy), run the operation once untimed on a 2-chunk model, "
        "then time one run (wall clock; CPU = the child's process CPU time, all threads); "
        "dask's default threaded scheduler. Memory: the child's VmHWM and its sampled RssAnon "
        "peak.",
        flush=True,
    )
    del model
    print(flush=True)

    t_start = time.perf_counter()
    results: dict[tuple[str, int], Result] = {}
    for T in Ts:
        for op in args.ops:
            r = measure(op, T, h5, mmap, dims, args.tmp_dir, frame_chunk)
            results[op, T] = r
            print(
                f"[T={T}] {op}: {fmt_s(r.seconds)} (CPU {fmt_s(r.cpu)}), VmHWM {_mib(r.hwm)}, "
                f"anon peak {_mib(r.anon_peak)}"
                f"{f', store {r.check / 2**20:,.0f} MiB' if op == 'rcm_zarr' else ''}"
                f"  ({loadavg_line()})",
                flush=True,
            )

    print()
    print("=" * 100)
    print(
        f"bench_scaling {spec.dims[0]}x{spec.dims[1]} K={spec.K}, T = {Ts[0]} … {Ts[-1]} "
        f"({'quick' if args.quick else 'full size'}); {loadavg_line()}"
    )
    print()
    header = (
        "operation",
        "T",
        "time",
        "CPU",
        "per frame",
        "time / time(T0)",
        "vs plain read",
        "VmHWM",
        "anon peak",
        "anon before",
        "anon growth",
    )
    lines: list[tuple[str, ...]] = []
    for op in args.ops:
        first = results[op, Ts[0]]
        for i, T in enumerate(Ts):
            r = results[op, T]
            rd = results.get(("read", T))
            vs = "" if op == "read" or rd is None else f"{r.seconds / rd.seconds:.2f}x"
            lines.append(
                (
                    OPS[op] if i == 0 else "",
                    f"{T:,}",
                    fmt_s(r.seconds),
                    fmt_s(r.cpu),
                    f"{1e3 * r.seconds / T:.3f} ms",
                    f"{r.seconds / first.seconds:.2f}x (T: {T // Ts[0]}x)",
                    vs,
                    _mib(r.hwm),
                    _mib(r.anon_peak),
                    "" if op == "read" else _mib(r.anon_before),
                    "" if op == "read" else _mib(max(0, r.anon_peak - r.anon_before)),
                )
            )
    print_rows(header, lines, right={1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
    print()
    print(
        f"scaling ({Ts[-1] // Ts[0]}x the frames; linear time: time ratio = {Ts[-1] // Ts[0]}x, "
        f"per-frame ratio = 1; flat memory: VmHWM max / min <= {FLAT_GOAL:g}):"
    )
    verdicts: list[tuple[str, ...]] = []
    for op in args.ops:
        rs = [results[op, T] for T in Ts]
        hwm = [r.hwm for r in rs]
        anon = [r.anon_peak for r in rs]
        flat = max(hwm) / min(hwm)
        per_frame = (rs[-1].seconds / Ts[-1]) / (rs[0].seconds / Ts[0])
        judged = op != "read"
        verdicts.append(
            (
                op,
                f"{rs[-1].seconds / rs[0].seconds:.2f}x",
                f"{rs[-1].cpu / rs[0].cpu:.2f}x" if rs[0].cpu > 0 else "",
                f"{per_frame:.2f}",
                f"{flat:.2f}",
                f"{max(anon) / min(anon):.2f}",
                ("YES" if flat <= FLAT_GOAL else "NO")
                if judged
                else "(not judged: np.memmap keeps touched pages mapped)",
            )
        )
    print_rows(
        (
            "operation",
            f"time {Ts[-1]} / time {Ts[0]}",
            f"CPU {Ts[-1]} / CPU {Ts[0]}",
            "per-frame ratio (time)",
            "VmHWM max/min",
            "anon max/min",
            f"memory flat (<= {FLAT_GOAL:g})?",
        ),
        verdicts,
        right={1, 2, 3, 4, 5},
    )
    print()
    judged_ops = [op for op in args.ops if op != "read"]
    all_flat = all(
        max(results[op, T].hwm for T in Ts) / min(results[op, T].hwm for T in Ts) <= FLAT_GOAL
        for op in judged_ops
    )
    if judged_ops:
        print(
            f"memory stayed flat for {', '.join(judged_ops)}: {'YES' if all_flat else 'NO'} "
            f"(goal: VmHWM max / min <= {FLAT_GOAL:g} over T = {Ts[0]} … {Ts[-1]})"
        )
    print(
        "notes: VmHWM includes the interpreter and libraries ('anon before': the child's "
        "anonymous memory just before the timed run, after imports and the warm-up; 'anon "
        "growth': anon peak - anon before, what the run itself added); "
        "short runs (--quick) are dominated by fixed per-call costs, so their time ratios "
        "understate linear growth; on a shared machine a run may get one CPU or two, so the "
        "CPU-time ratio (process CPU, all threads) is the steadier measure of linearity."
    )
    print()
    print(f"this process: {memory_summary()}")
    print(f"{loadavg_line()} at end; measuring took {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
