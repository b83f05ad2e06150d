"""Export to zarr: our streamed export against writing an already computed array, same run.

On the synthetic 512×512, T=8000, K=500 model of ``bench_frames.py`` (same files, reused), each
measurement runs in a fresh child process (so its peak memory is its own):

- ``cd.to_zarr(model, out, movies=(name,), projections=(), factors=False)`` for the RCM and for
  the residuals (zstd, float64, the default ~16 MiB chunks);
- the baseline: zarr writing the same number of chunks of the same shape, dtype and codec from
  an array that is already computed (one chunk of RCM frames, computed before the clock starts,
  written into every chunk region with ``zarr.Array.__setitem__``, 2 threads like dask's
  scheduler) — pure encode + write throughput;
- the compression ratio (logical bytes / bytes on disk) of both stores, and the child's peak
  memory (``VmHWM``; see ``_projbench.py`` for why not ``ru_maxrss``) and sampled anonymous peak.

Goals (issue 5): export time ≥ 0.8× the baseline's speed (i.e. ours ≤ 1.25× its time); peak
memory ≤ 1.5 GB. ``--quick``: the 128×128, T=1000, K=60 dataset. Reports; always exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    FULL,
    QUICK,
    benchmark_model,
    loadavg_line,
    machine_header,
)
from _projbench import CHILD_PROLOGUE, run_measured_child

EXPORT = (
    CHILD_PROLOGUE
    + """
m = cd.open_cnmf(a["h5"])
# untimed warm-up: numba kernels from their cache, zarr's codecs, the factors in memory
getattr(cd, a["movie"])(m).data[:2].compute()
f2 = None if m.f is None else m.f[:, :2]
w = cd.from_arrays(m.A, m.C[:, :2], dims=m.dims, b=m.b, f=f2, Y=m.Y[:2])
cd.to_zarr(w, a["out"] + ".warm", movies=(a["movie"],), projections=(), factors=False,
           progress=False)
t0 = time.perf_counter()
cd.to_zarr(m, a["out"], movies=(a["movie"],), projections=(), factors=False, progress=False)
dt = time.perf_counter() - t0
import zarr
arr = zarr.open_array(a["out"] + "/" + a["movie"] + "/0", mode="r")
disk = sum(p.stat().st_size for p in Path(a["out"]).rglob("*") if p.is_file())
print(json.dumps({"seconds": dt, "disk": disk, "logical": arr.nbytes, "chunks": arr.chunks,
                  **_mem()}))
"""
)

BASELINE = (
    CHILD_PROLOGUE
    + """
from concurrent.futures import ThreadPoolExecutor
import zarr
m = cd.open_cnmf(a["h5"])
shape, chunks = tuple(a["shape"]), tuple(a["chunks"])
block = cd.rcm(m)[0 : chunks[0]]  # one chunk of real frames, computed before timing
arr = zarr.create_array(a["out"], shape=shape, chunks=chunks, dtype=block.dtype,
                        compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0)
starts = list(range(0, shape[0], chunks[0]))

def write(t):
    arr[t : t + chunks[0]] = block[: min(chunks[0], shape[0] - t)]

t0 = time.perf_counter()
with ThreadPoolExecutor(2) as ex:
    list(ex.map(write, starts))
dt = time.perf_counter() - t0
disk = sum(p.stat().st_size for p in Path(a["out"]).rglob("*") if p.is_file())
print(json.dumps({"seconds": dt, "disk": disk, "logical": arr.nbytes, **_mem()}))
"""
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128x128, T=1000, K=60")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--tmp-dir", type=Path, default=None, help="where the stores are written")
    args = p.parse_args(argv)
    spec = QUICK if args.quick else FULL
    print(machine_header(f"bench_export {spec.tag}{' (quick)' if args.quick else ''}"))
    model = benchmark_model(spec, args.data_dir)
    h5 = str(model.files["cnmf"])
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_", dir=args.tmp_dir))
    rows = []
    try:
        results = {}
        for movie in ("rcm", "residuals"):
            out = tmp / f"{movie}.zarr"
            res = run_measured_child(EXPORT, {"h5": h5, "out": str(out), "movie": movie})
            results[movie] = res
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(str(out) + ".warm", ignore_errors=True)
        chunks = results["rcm"].report["chunks"]
        shape = [spec.T, *spec.dims]
        base = run_measured_child(
            BASELINE, {"h5": h5, "out": str(tmp / "base.zarr"), "shape": shape, "chunks": chunks}
        )
        shutil.rmtree(tmp / "base.zarr", ignore_errors=True)
        b = base.report
        print(f"\nzarr chunks {tuple(chunks)} float64, zstd level 3; {loadavg_line()}")
        head = (
            f"{'operation':<26} {'ours (s)':>9} {'baseline (s)':>13} {'speed vs base':>14} "
            f"{'goal':>7} {'met?':>5} {'compression':>12} {'peak VmHWM':>11} {'peak anon':>10}"
        )
        print(head)
        print("-" * len(head))
        for movie, res in results.items():
            r = res.report
            speed = b["seconds"] / r["seconds"]
            met = "YES" if speed >= 0.8 and r["VmHWM"] <= 1.5e9 else "NO"
            rows.append((movie, speed, met))
            print(
                f"{'export ' + movie:<26} {r['seconds']:>9.1f} {b['seconds']:>13.1f} "
                f"{speed:>13.2f}x {'>=0.8x':>7} {met:>5} {r['logical'] / r['disk']:>11.2f}x "
                f"{r['VmHWM'] / 1e9:>9.2f} GB {res.peak_anon / 1e9:>8.2f} GB"
            )
        print(
            f"{'baseline: precomputed':<26} {'':>9} {b['seconds']:>13.1f} {'':>14} {'':>7} "
            f"{'':>5} {b['logical'] / b['disk']:>11.2f}x {b['VmHWM'] / 1e9:>9.2f} GB "
            f"{base.peak_anon / 1e9:>8.2f} GB"
        )
        print(
            "(baseline compression is of repeated identical chunks of RCM frames: it is a "
            "speed baseline, its ratio is not comparable)"
        )
        print(
            f"goals: speed >= 0.8x the baseline, peak memory <= 1.5 GB; "
            f"{', '.join(f'{m}: {s}' for m, _, s in rows)}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
