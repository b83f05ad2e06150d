"""CNMF-E summary images (``cd.pnr_images``) against floors and the dense version, same run.

On a 1p-like float32 movie written once as a CaImAn frame-major (order F) memmap under
``benchmarks/.data`` (512×512, T=8000: 8.4 GB; ``--quick``: 128×128, T=4000, plus its
pixel-major order C copy) this prints

- ``cd.pnr_images(path, gSig=3)``, run in a child process that does only that (wall and CPU
  time, sampled peak anonymous / file-backed memory and ``VmHWM``), against
  - floor 1: one plain read of Y (``np.sum`` over a fresh ``np.memmap``, 256 frames at a
    time; the median of the reads before and after);
  - floor 2: one filtered pass: our filter applied to every frame, block by block on dask's
    threaded scheduler, nothing else (the main pass of pnr_images filters every frame once,
    the noise estimate ≤ 3072 frames once more);
- the filter alone on one frame: ours (numba, four-fold symmetric taps, float64) against
  ``scipy.ndimage.correlate`` (float64) and, when OpenCV is importable, CaImAn's own
  ``cv2.filter2D`` (float32);
- the same with 32 MiB noise tiles (``tile_bytes``): the working memory follows the tile;
- for scale, the dense in-RAM NumPy/SciPy version of what CaImAn does (float32 movie, a
  filtered float32 copy, a thresholded copy, an FFT of the noise frames, all in memory) on the
  first frames that fit (``--dense-frames``; whole movie with ``--quick``), in a child
  process: its time and peak memory beside ours on the same frames, and the largest
  difference of the two results.

The script reports; it always exits 0.

Usage::

    python benchmarks/bench_pnr.py            # 512×512, T=8000 (writes 8.4 GB once)
    python benchmarks/bench_pnr.py --quick    # 128×128, T=4000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATA_DIR, loadavg_line, machine_header, time_call, warm_page_cache
from _projbench import (
    CHILD_PROLOGUE,
    ChildResult,
    GoalRow,
    fmt_ratio,
    fmt_s,
    plain_read,
    print_goal_table,
    run_measured_child,
)

import caiman_dask as cd
from caiman_dask._summary_kernels import correlate_frames, pnr_kernel

GSIG = 3
READ_CHUNK = 256
SEED = 0


def write_movie(path: Path, T: int, dims: tuple[int, int], order: str) -> Path:
    """A 1p-like float32 movie as a CaImAn memmap (written once, then reused): a bright
    drifting background, Gaussian cells with sparse transients, noise."""
    d1, d2 = dims
    name = path / f"pnr_seed{SEED}_d1_{d1}_d2_{d2}_d3_1_order_{order}_frames_{T}.mmap"
    if name.exists() and name.stat().st_size == 4 * T * d1 * d2:
        return name
    path.mkdir(parents=True, exist_ok=True)
    tmp = name.with_suffix(".part")
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[:d1, :d2]
    bg = 900 + 500 * np.exp(-((yy - d1 / 2) ** 2 + (xx - d2 / 3) ** 2) / (2 * (d1 / 2) ** 2))
    n_cells = max(4, d1 * d2 // 1500)
    cy, cx = rng.uniform(4, d1 - 4, n_cells), rng.uniform(4, d2 - 4, n_cells)
    spikes = (rng.random((n_cells, T)) < 0.02) * rng.uniform(60, 150, (n_cells, T))
    traces = np.stack([np.convolve(s, 0.9 ** np.arange(40))[:T] for s in spikes])
    ext = 9
    P = d1 * d2
    shape = (T, P) if order == "F" else (P, T)
    mm = np.memmap(tmp, np.float32, "w+", shape=shape)
    print(f"[data] writing {name.name} ({4 * T * P / 1e9:.2f} GB) ...", flush=True)
    step = max(1, (64 << 20) // (8 * P))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        gain = 1 + 0.05 * np.sin(np.arange(t0, t1) / 60)
        Y = bg[None] * gain[:, None, None]
        for k in range(n_cells):
            i0, i1 = max(0, int(cy[k]) - ext), min(d1, int(cy[k]) + ext + 1)
            j0, j1 = max(0, int(cx[k]) - ext), min(d2, int(cx[k]) + ext + 1)
            fp = np.exp(-((yy[i0:i1, j0:j1] - cy[k]) ** 2 + (xx[i0:i1, j0:j1] - cx[k]) ** 2) / 12.5)
            Y[:, i0:i1, j0:j1] += fp[None] * traces[k, t0:t1, None, None]
        Y += rng.standard_normal(Y.shape) * 20
        block = Y.astype(np.float32).reshape(t1 - t0, P, order="F")  # CaImAn's pixel order
        if order == "F":
            mm[t0:t1] = block
        else:
            mm[:, t0:t1] = block.T
    mm.flush()
    del mm
    tmp.rename(name)
    return name


_OURS_CHILD = (
    CHILD_PROLOGUE
    + """
cd.pnr_images(a["path"], a["gsig"], frames=slice(0, 64))  # JIT loading is not the pass
base = _mem()["RssAnon"]
w0, c0 = time.perf_counter(), time.process_time()
corr, pnr = cd.pnr_images(
    a["path"], a["gsig"], frames=slice(0, a["T"]), tile_bytes=a.get("tile_bytes")
)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
if a.get("out"):
    np.savez(a["out"], corr=corr, pnr=pnr)
print(json.dumps({"wall": wall, "cpu": cpu, "base_anon": base, **_mem()}))
"""
)

_DENSE_CHILD = (
    CHILD_PROLOGUE
    + """
import scipy.ndimage
from caiman_dask._summary_kernels import pnr_kernel

def dense(Y, gsig):
    # what CaImAn's correlation_pnr does, with NumPy / SciPy in place of OpenCV: float32
    data = Y.astype(np.float32)                      # the movie in RAM
    k = pnr_kernel(gsig).weights.astype(np.float32)
    filt = np.empty_like(data)                       # a filtered copy
    for t in range(len(data)):
        filt[t] = scipy.ndimage.correlate(data[t], k, mode="nearest")
    filt -= filt.mean(axis=0)
    T = len(filt)
    sel = np.r_[1:1025, T // 2 - 512:T // 2 + 512, T - 1024:T] if T > 3072 else np.arange(T)
    N = len(sel)
    ff = np.arange(0, 0.5 + 1.0 / N, 1.0 / N)
    band = np.flatnonzero((ff > 0.25) & (ff <= 0.5))
    X = np.fft.rfft(filt[sel], axis=0)[band]
    sn = np.sqrt(np.mean(np.abs(X) ** 2, axis=0) / N).astype(np.float32)
    del X
    pnr = filt.max(axis=0) / sn
    pnr[pnr < 0] = 0
    tmp = filt / sn                                  # a thresholded copy
    tmp[tmp < 3] = 0
    tmp -= tmp.mean(axis=0)
    sd = tmp.std(axis=0)
    sd[sd == 0] = np.inf
    tmp /= sd
    sz = np.ones((3, 3), np.float32)
    sz[1, 1] = 0
    conv = np.stack([scipy.ndimage.correlate(f, sz, mode="constant") for f in tmp])
    mask = scipy.ndimage.correlate(np.ones(tmp.shape[1:], np.float32), sz, mode="constant")
    corr = np.mean(conv * tmp, axis=0) / mask
    return corr, pnr

dense(np.ones((8, 16, 16), np.float32), a["gsig"])
base = _mem()["RssAnon"]
w0, c0 = time.perf_counter(), time.process_time()
mm = cd.open_movie(a["path"]).data[: a["T"]].compute()  # CaImAn holds the movie in RAM
corr, pnr = dense(mm, a["gsig"])
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
np.savez(a["out"], corr=corr, pnr=pnr)
print(json.dumps({"wall": wall, "cpu": cpu, "base_anon": base, **_mem()}))
"""
)


def _grew(child: ChildResult) -> float:
    """Peak anonymous memory above the child's own after imports and warm-up (bytes)."""
    return max(0.0, child.peak_anon - child.report.get("base_anon", 0))


def filter_pass(path: Path) -> float:
    """Seconds for floor 2: our filter over every frame, block by block, on dask's threads."""
    data = cd.open_movie(path).data
    kernel = pnr_kernel(GSIG)
    blocks = data.map_blocks(lambda b: correlate_frames(b, kernel)[:, :1, :1], chunks=(
        data.chunks[0], (1,), (1,)), dtype=np.float64)  # fmt: skip
    blocks[:2].compute()  # JIT
    t0 = time.perf_counter()
    blocks.sum().compute()
    return time.perf_counter() - t0


def one_frame_filters(path: Path) -> list[GoalRow]:
    """The filter alone on one frame: ours, SciPy, and OpenCV (CaImAn's) when available."""
    import scipy.ndimage

    frames = np.asarray(cd.open_movie(path).data[:8].compute(), dtype=np.float32)
    kernel = pnr_kernel(GSIG)
    k64 = kernel.weights
    ours = time_call(lambda f: correlate_frames(f[None], kernel), list(frames), budget_s=2.0)
    f64 = frames.astype(np.float64)
    scipy_t = time_call(
        lambda f: scipy.ndimage.correlate(f, k64, mode="nearest"), list(f64), budget_s=2.0
    )
    rows = [
        GoalRow(
            f"filter one frame ({GSIG * 4 + 1}x{GSIG * 4 + 1} taps), ours",
            f"{ours.median_ms:.2f} ms",
            "scipy.ndimage.correlate (float64)",
            f"{scipy_t.median_ms:.2f} ms",
            fmt_ratio(ours.median, scipy_t.median),
        )
    ]
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        rows.append(GoalRow("", "", "cv2.filter2D (CaImAn)", "unavailable: no OpenCV"))
        return rows
    k32 = k64.astype(np.float32)
    cv_t = time_call(lambda f: cv2.filter2D(f, -1, k32, borderType=1), list(frames), budget_s=2.0)
    rows.append(
        GoalRow(
            "",
            "",
            "cv2.filter2D float32 (CaImAn's loop)",
            f"{cv_t.median_ms:.2f} ms",
            fmt_ratio(ours.median, cv_t.median),
            continued=True,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; always returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128x128, T=4000")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument(
        "--dense-frames", type=int, default=None, help="frames of the dense run (full: 1000)"
    )
    args = p.parse_args(argv)
    dims, T = ((128, 128), 4000) if args.quick else ((512, 512), 8000)
    dense_T = args.dense_frames or (T if args.quick else 1000)
    header = machine_header(
        f"bench_pnr: cd.pnr_images(gSig={GSIG}) on a {dims[0]}x{dims[1]}, T={T} float32 "
        f"CaImAn memmap{' (--quick)' if args.quick else ''}"
    )
    print(header, flush=True)
    paths = {"F": write_movie(args.data_dir, T, dims, "F")}
    if args.quick:
        paths["C"] = write_movie(args.data_dir, T, dims, "C")
    P = math.prod(dims)
    rows: list[GoalRow] = []
    mem_rows: list[GoalRow] = []
    runs: dict[str, ChildResult] = {}
    for order, path in paths.items():
        what = "frame-major (order F)" if order == "F" else "pixel-major (order C)"
        secs = warm_page_cache(path)
        print(f"[{order}] page cache warmed in {secs:.1f} s; {loadavg_line()}", flush=True)
        reads = []
        if order == "F":
            reads.append(plain_read(path, T, P, READ_CHUNK)[0])
        print(f"[{order}] pnr_images in a measured child ...", flush=True)
        out = str(args.data_dir / f"pnr_ours_{order}.npz")
        child = run_measured_child(
            _OURS_CHILD, {"path": str(path), "gsig": GSIG, "T": T, "out": out}
        )
        runs[order] = child
        rep = child.report
        print(f"[{order}]   {fmt_s(rep['wall'])} (CPU {fmt_s(rep['cpu'])})", flush=True)
        if order == "F":
            reads.append(plain_read(path, T, P, READ_CHUNK)[0])
            read = float(np.median(reads))
            print(f"[{order}] floor 2: one filtered pass ...", flush=True)
            fpass = filter_pass(path)
            rows.append(
                GoalRow(
                    f"pnr_images, {what}",
                    fmt_s(rep["wall"]),
                    "floor 1: plain read of Y",
                    fmt_s(read),
                    fmt_ratio(rep["wall"], read),
                )
            )
            rows.append(
                GoalRow(
                    "",
                    "",
                    "floor 2: one filtered pass",
                    fmt_s(fpass),
                    fmt_ratio(rep["wall"], fpass),
                    continued=True,
                )
            )
        else:
            rows.append(GoalRow(f"pnr_images, {what}", fmt_s(rep["wall"])))
        rows.append(GoalRow(f"  its CPU time [{order}]", fmt_s(rep["cpu"])))
        mem_rows.append(
            GoalRow(
                f"pnr_images peak working memory, {what}",
                f"anon +{_grew(child) / 2**20:,.0f} MiB",
                "the movie (float32)",
                f"{4 * T * P / 2**20:,.0f} MiB",
                f"file-backed {child.peak_file / 2**20:,.0f} MiB, VmHWM "
                f"{rep.get('VmHWM', 0) / 2**20:,.0f} MiB",
            )
        )
    tile = 32 * 2**20
    print(f"[F] pnr_images with tile_bytes={tile >> 20} MiB in a measured child ...", flush=True)
    small = run_measured_child(
        _OURS_CHILD, {"path": str(paths["F"]), "gsig": GSIG, "T": T, "tile_bytes": tile}
    )
    rows.append(
        GoalRow(
            f"pnr_images, order F, tile_bytes={tile >> 20} MiB",
            fmt_s(small.report["wall"]),
            "default tiles (512 MiB)",
            fmt_s(runs["F"].report["wall"]),
            fmt_ratio(small.report["wall"], runs["F"].report["wall"]),
        )
    )
    mem_rows.append(
        GoalRow(
            f"pnr_images peak working memory, order F, tile_bytes={tile >> 20} MiB",
            f"anon +{_grew(small) / 2**20:,.0f} MiB",
            "default tiles (512 MiB)",
            f"anon +{_grew(runs['F']) / 2**20:,.0f} MiB",
            fmt_ratio(_grew(small), _grew(runs["F"])).replace("faster", "less"),
        )
    )
    rows.extend(one_frame_filters(paths["F"]))

    print(f"[dense] the dense NumPy/SciPy version on {dense_T} frames, in a child ...", flush=True)
    out_d, out_o = args.data_dir / "pnr_dense.npz", args.data_dir / "pnr_ours_F.npz"
    dense = run_measured_child(
        _DENSE_CHILD, {"path": str(paths["F"]), "gsig": GSIG, "T": dense_T, "out": str(out_d)}
    )
    ours = runs["F"]
    if dense_T != T:
        out_o = args.data_dir / "pnr_ours_dense.npz"
        ours = run_measured_child(
            _OURS_CHILD, {"path": str(paths["F"]), "gsig": GSIG, "T": dense_T, "out": str(out_o)}
        )
    with np.load(out_d) as zd, np.load(out_o) as zo:
        d_pnr = float(np.max(np.abs(zd["pnr"] - zo["pnr"]) / np.maximum(np.abs(zo["pnr"]), 1)))
        d_corr = float(np.nanmax(np.abs(zd["corr"] - zo["corr"])))
    dr, orp = dense.report, ours.report
    rows.append(
        GoalRow(
            f"pnr_images, first {dense_T} frames",
            fmt_s(orp["wall"]),
            "dense in-RAM NumPy/SciPy (CaImAn's way)",
            fmt_s(dr["wall"]),
            fmt_ratio(orp["wall"], dr["wall"]),
        )
    )
    mem_rows.append(
        GoalRow(
            f"peak working memory, first {dense_T} frames",
            f"anon +{_grew(ours) / 2**20:,.0f} MiB",
            "dense in-RAM NumPy/SciPy",
            f"anon +{_grew(dense) / 2**20:,.0f} MiB",
            fmt_ratio(_grew(ours), _grew(dense)).replace("faster", "less"),
        )
    )
    print("=" * 100)
    print(header)
    print(
        "  method: each pnr_images run in a fresh child process after a 64-frame warm-up call "
        "(JIT loading); memory sampled every 50 ms; working memory = peak anonymous memory "
        "(heap, NumPy buffers) above the child's own after imports and warm-up; file-backed = "
        "memmap pages touched; page cache warm; dask's threaded scheduler"
    )
    print()
    print_goal_table(rows, "time")
    print()
    print_goal_table(mem_rows, "memory")
    print()
    print(
        f"dense vs ours on {dense_T} frames (float32 vs float64 arithmetic): max pnr difference "
        f"{d_pnr:.1e} (relative, floor 1), max corr difference {d_corr:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
