"""Helpers shared by the benchmark scripts in ``benchmarks/``.

- :func:`time_call`: median latency over many repetitions (a time budget bounds slow calls);
- :func:`peak_rss_mib`, :func:`rss_breakdown`: memory, from ``resource.getrusage`` and
  ``/proc/self/status``;
- :class:`Row`, :func:`print_table`: the plain-text result table;
- :func:`benchmark_model`: the synthetic benchmark model, written to disk once (in a child
  process, with progress) and reused;
- :func:`read_caiman_hdf5`, :func:`caiman_memmap_images`: the factors and the movie as CaImAn
  (and so mesmerize-core) would load them, read with h5py / NumPy only;
- :func:`load_mesmerize_cnmf_arrays`: mesmerize-core's ``arrays/_cnmf.py`` without its package
  ``__init__`` (which imports CaImAn).

Run the scripts from anywhere; they import ``caiman_dask`` from the environment.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

#: Default directory for generated benchmark data (not tracked by git).
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / ".data"


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Latencies of repeated calls (wall clock) and the process CPU time they used, in seconds."""

    samples: tuple[float, ...]
    cpu_samples: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        """Median latency (s)."""
        return statistics.median(self.samples)

    @property
    def median_ms(self) -> float:
        """Median latency (ms)."""
        return 1e3 * self.median

    @property
    def cpu_median_ms(self) -> float | None:
        """Median process CPU time (ms; all threads), or ``None`` if not recorded.

        Much below :attr:`median_ms` for a single-threaded call means the machine was busy
        (the call waited for a CPU).
        """
        return 1e3 * statistics.median(self.cpu_samples) if self.cpu_samples else None

    @property
    def reps(self) -> int:
        """Number of timed repetitions."""
        return len(self.samples)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (s), nearest rank."""
        s = sorted(self.samples)
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def time_call(
    fn: Callable[[Any], Any],
    args: Sequence[Any],
    *,
    min_reps: int = 5,
    max_reps: int = 200,
    budget_s: float = 5.0,
    warmup: int = 2,
) -> Timing:
    """Time ``fn(arg)`` once per repetition, cycling through ``args``; return all latencies.

    ``warmup`` untimed calls come first (JIT compilation, caches of prepared operators). Then
    at least ``min_reps`` and at most ``max_reps`` timed calls, stopping early once
    ``budget_s`` seconds have been spent timing. The result of each call is kept alive until
    the clock stops (so freeing it is not timed) and dropped before the next call.
    """
    if not args:
        raise ValueError("time_call needs at least one argument to cycle through")
    for i in range(warmup):
        fn(args[i % len(args)])
    samples: list[float] = []
    cpu: list[float] = []
    spent = 0.0
    i = 0
    while len(samples) < max_reps and (len(samples) < min_reps or spent < budget_s):
        a = args[i % len(args)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fn(a)
        dt = time.perf_counter() - t0
        cpu.append(time.process_time() - c0)
        del out
        samples.append(dt)
        spent += dt
        i += 1
    return Timing(tuple(samples), tuple(cpu))


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB), from ``resource.getrusage``.

    On Linux this includes file-backed pages of memory maps the process touched.
    """
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        kib /= 1024
    return kib / 1024


def rss_breakdown() -> dict[str, float]:
    """Current ``RssAnon`` / ``RssFile`` / ``VmRSS`` in MiB (Linux; empty elsewhere)."""
    out: dict[str, float] = {}
    status = Path("/proc/self/status")
    if not status.exists():
        return out
    for line in status.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def memory_summary() -> str:
    """One line: peak RSS, and the current anonymous / file-backed split."""
    parts = [f"peak RSS {peak_rss_mib():,.0f} MiB (getrusage ru_maxrss)"]
    cur = rss_breakdown()
    if cur:
        parts.append(
            f"now: anon {cur.get('RssAnon', float('nan')):,.0f} MiB + file-backed (memmap pages "
            f"touched) {cur.get('RssFile', float('nan')):,.0f} MiB"
        )
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a result table.

    ``ours_ms`` / ``base_ms`` are ``None`` when not measured (``ours_cpu_ms``: the process CPU
    time of ours, shown to tell a slow call from a busy machine); ``base_note`` replaces the
    baseline time (e.g. ``"unavailable: ..."``); ``met`` is ``None`` when the row has no target;
    ``continued`` rows compare the previous row's operation with another baseline (its
    operation and "ours" cells are left blank, its ratio still uses ``ours_ms``).
    """

    operation: str
    ours_ms: float | None
    baseline: str = ""
    base_ms: float | None = None
    target: str = ""
    met: bool | None = None
    frames: int = 1
    ours_cpu_ms: float | None = None
    base_note: str = ""
    continued: bool = False

    @property
    def ratio(self) -> float | None:
        """``ours / baseline`` (below 1: ours is faster)."""
        if self.ours_ms is None or self.base_ms is None or self.base_ms <= 0:
            return None
        return self.ours_ms / self.base_ms

    @property
    def ours_fps(self) -> float | None:
        """Frames per second of ours (for multi-frame rows)."""
        if self.ours_ms is None or self.ours_ms <= 0:
            return None
        return self.frames / (self.ours_ms / 1e3)


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _fmt_ratio(x: float | None) -> str:
    if x is None:
        return ""
    if x >= 0.1:
        return f"{x:.2f}x"
    return f"{x:.2g}x"


def print_table(rows: Iterable[Row], title: str = "", file: Any = None) -> None:
    """Print rows as a plain-text table with aligned columns."""
    rows = list(rows)
    header = (
        "operation",
        "ours (ms)",
        "ours CPU ms",
        "ours fr/s",
        "baseline",
        "baseline (ms)",
        "ratio",
        "target",
        "met?",
    )
    lines: list[tuple[str, ...]] = []
    for r in rows:
        fps = r.ours_fps
        lines.append(
            (
                "" if r.continued else r.operation,
                "" if r.continued else _fmt_ms(r.ours_ms),
                "" if r.continued or r.ours_cpu_ms is None else _fmt_ms(r.ours_cpu_ms),
                "" if r.continued or r.frames == 1 or fps is None else f"{fps:,.0f}",
                r.baseline,
                r.base_note if r.base_note else _fmt_ms(r.base_ms),
                _fmt_ratio(r.ratio),
                r.target,
                "" if r.met is None else ("YES" if r.met else "NO"),
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {1, 2, 3, 5, 6}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = file or sys.stdout
    if title:
        print(title, file=out)
    print(fmt(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for line in lines:
        print(fmt(line), file=out)
    out.flush()


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def machine_header(title: str) -> str:
    """A header naming the machine, the load average and library versions."""
    import dask
    import numba

    import caiman_dask

    la = os.getloadavg()
    env = [f"{k}={os.environ[k]}" for k in _THREAD_VARS if k in os.environ]
    blas = ", ".join(env) if env else "library default (no *_NUM_THREADS set)"
    return "\n".join(
        [
            title,
            f"  host: {platform.node()}  {platform.machine()}  {os.cpu_count()} CPUs  "
            f"Python {platform.python_version()}",
            f"  load average (1/5/15 min) at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
            " — other processes may share the machine",
            f"  caiman_dask {caiman_dask.__version__}, numpy {np.__version__}, scipy "
            f"{scipy.__version__}, numba {numba.__version__}, dask {dask.__version__}",
            f"  BLAS threads: {blas}",
        ]
    )


def loadavg_line() -> str:
    """The current load average as one line."""
    la = os.getloadavg()
    return f"load average (1/5/15 min): {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"


# ---------------------------------------------------------------------------------------------
# Synthetic benchmark model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Arguments of :func:`caiman_dask.synthetic` for a benchmark dataset."""

    dims: tuple[int, ...]
    T: int
    K: int
    seed: int = 0

    @property
    def tag(self) -> str:
        """Directory name identifying the dataset."""
        return f"synthetic_{'x'.join(map(str, self.dims))}_T{self.T}_K{self.K}_seed{self.seed}"

    @property
    def movie_bytes(self) -> int:
        """Size of the float32 movie file."""
        return 4 * math.prod(self.dims) * self.T


#: The issue's benchmark model (512×512, T=8000, K=500, nb=2) and its ``--quick`` version.
FULL = ModelSpec(dims=(512, 512), T=8000, K=500, seed=0)
QUICK = ModelSpec(dims=(128, 128), T=1000, K=60, seed=0)


def _proc_rss_file_bytes(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    return None


_GENERATE = """
import json, sys, time
import numpy as np
import caiman_dask as cd
a = json.loads(sys.argv[1])
kw = a["kwargs"]
if "dtype" in kw:
    kw["dtype"] = np.dtype(kw["dtype"])
kw["dims"] = tuple(kw["dims"])
t0 = time.perf_counter()
cd.synthetic(path=a["path"], **kw)
print(f"synthetic data ready in {time.perf_counter() - t0:.1f} s", flush=True)
"""


def synthetic_model(kwargs: dict[str, Any], path: Path, *, progress_every: float = 15.0) -> Any:
    """``cd.synthetic(path=path, **kwargs)``, files written (or reused) in a child first.

    ``kwargs`` must be JSON-serialisable except ``dtype`` (passed as a NumPy dtype or its name).
    Pass floats as floats (``ring_radius=9.0``): the reuse stamp compares ``repr`` of the args.
    """
    import caiman_dask as cd

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    kw = dict(kwargs)
    if "dtype" in kw:
        kw["dtype"] = np.dtype(kw["dtype"]).name
    kw["dims"] = list(kw["dims"])
    movie_bytes = 4 * math.prod(kwargs["dims"]) * int(kwargs["T"])
    print(f"preparing data in {path} (movie {movie_bytes / 1e9:.2f} GB) ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _GENERATE, json.dumps({"kwargs": kw, "path": str(path)})]
    )
    next_report = t0 + progress_every
    while proc.poll() is None:
        time.sleep(0.5)
        now = time.perf_counter()
        if now >= next_report:
            rss = _proc_rss_file_bytes(proc.pid)
            done = (
                ""
                if rss is None
                else f", ~{min(rss, movie_bytes) / 1e9:.2f} of {movie_bytes / 1e9:.2f} GB written"
            )
            print(f"  ... {now - t0:.0f} s{done}", flush=True)
            next_report = now + progress_every
    if proc.returncode != 0:
        raise RuntimeError(f"generating the benchmark data failed (exit code {proc.returncode})")
    real = dict(kwargs)
    if "dtype" in real:
        real["dtype"] = np.dtype(real["dtype"])
    real["dims"] = tuple(real["dims"])
    return cd.synthetic(path=path, **real)


def benchmark_model(spec: ModelSpec, data_dir: Path, *, progress_every: float = 15.0) -> Any:
    """The synthetic model ``spec`` backed by CaImAn-format files under ``data_dir/spec.tag``.

    See :func:`synthetic_model`: the files are written (or validated and reused) in a child
    process, so generating them does not count towards this process's peak RSS.
    """
    kwargs = {"dims": spec.dims, "T": spec.T, "K": spec.K, "seed": spec.seed}
    return synthetic_model(kwargs, Path(data_dir) / spec.tag, progress_every=progress_every)


def warm_page_cache(path: Path, block: int = 64 << 20) -> float:
    """Read ``path`` through once with plain reads (no mapping); return the seconds it took.

    Afterwards frames come from the page cache, not the disk, and the reads did not add to this
    process's resident set.
    """
    t0 = time.perf_counter()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(view):
            pass
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# CaImAn-style loading (for baselines)
# ---------------------------------------------------------------------------------------------


def read_caiman_hdf5(path: Path) -> dict[str, Any]:
    """``A`` (scipy CSC, Fortran pixel rows), ``C``, ``b``, ``f``, ``dims`` from a CNMF HDF5.

    Plain h5py, as CaImAn's ``load_CNMF`` reads them (sparse groups become ``csc_matrix``).
    """
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as h:
        est = h["estimates"]
        g = est["A"]
        shape = tuple(int(s) for s in g["shape"][()])
        out["A"] = scipy.sparse.csc_matrix(
            (g["data"][()], g["indices"][()], g["indptr"][()]), shape=shape
        )
        for name in ("C", "b", "f"):
            out[name] = np.asarray(est[name][()])
        out["dims"] = tuple(int(d) for d in est["dims"][()])
    return out


def caiman_memmap_images(path: Path, dims: Sequence[int], T: int, order: str = "F") -> np.ndarray:
    """A CaImAn memmap as mesmerize-core's ``get_input_movie`` sees it.

    ``Yr`` is ``(P, T)`` in the file's order (what ``caiman.load_memmap`` returns: Fortran for a
    frame-major ``order_F`` file, C for CNMF's pixel-major ``order_C`` one) and
    ``images = np.reshape(Yr.T, [T] + dims, order="F")``: a zero-copy ``(T, *dims)`` view.
    """
    P = math.prod(dims)
    Yr = np.memmap(path, np.float32, "r", shape=(P, T), order=order)
    images = np.reshape(Yr.T, [T, *dims], order="F")
    if not np.shares_memory(images, Yr):
        raise RuntimeError("expected a view of the memmap")
    return images


def pixel_major_copy(src: Path, dims: Sequence[int], T_src: int, T: int) -> Path:
    """The first ``T`` frames of the frame-major memmap ``src`` as a pixel-major CaImAn memmap
    (``order_C``, what ``cm.save_memmap(order='C')`` writes for CNMF), beside it; written once,
    reused when it exists with the right size."""
    d3 = dims[2] if len(dims) > 2 else 1
    P = math.prod(dims)
    dst = src.with_name(f"pixel_major_d1_{dims[0]}_d2_{dims[1]}_d3_{d3}_order_C_frames_{T}.mmap")
    if dst.exists() and dst.stat().st_size == P * T * 4:
        return dst
    frames = np.memmap(src, np.float32, "r", shape=(T_src, P))
    tmp = dst.with_suffix(".partial")
    out = np.memmap(tmp, np.float32, "w+", shape=(P, T))
    for p0 in range(0, P, 8192):
        out[p0 : p0 + 8192] = frames[:T, p0 : p0 + 8192].T
    out.flush()
    del out
    tmp.rename(dst)
    return dst


class MesmerizeUnavailable(RuntimeError):
    """mesmerize-core's lazy arrays could not be loaded; the message says why."""


#: Name of the stand-in package under which mesmerize-core's ``arrays`` modules are loaded.
_MESMERIZE_ALIAS = "_bench_mesmerize_arrays"


def load_mesmerize_cnmf_arrays() -> types.ModuleType:
    """mesmerize-core's ``arrays/_cnmf.py`` as a module, without running its package ``__init__``.

    ``importlib.util.find_spec("mesmerize_core")`` locates the installed package without
    executing it (its ``__init__`` imports CaImAn). ``_cnmf.py`` does ``from ._base import
    LazyArray``, so it must live in a package: we register one empty stand-in package,
    ``_bench_mesmerize_arrays``, whose ``__path__`` is the installed ``mesmerize_core/arrays``
    directory (its ``__init__`` — which imports the tiff / video readers — is *not* run), then
    load ``_base.py`` and ``_cnmf.py`` from the installed files as its submodules. Nothing else
    is stubbed: both files need only NumPy and SciPy.

    Raises
    ------
    MesmerizeUnavailable
        mesmerize-core is not installed or its files cannot be loaded.
    """
    done = sys.modules.get(f"{_MESMERIZE_ALIAS}._cnmf")
    if done is not None:
        return done
    try:
        spec = importlib.util.find_spec("mesmerize_core")
    except (ImportError, ValueError) as exc:
        raise MesmerizeUnavailable(f"find_spec failed: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise MesmerizeUnavailable(
            "mesmerize-core not installed (pip install mesmerize-core --no-deps)"
        )
    arrays_dir = Path(next(iter(spec.submodule_search_locations))) / "arrays"
    if not (arrays_dir / "_cnmf.py").exists():
        raise MesmerizeUnavailable(f"{arrays_dir / '_cnmf.py'} not found")
    pkg = types.ModuleType(_MESMERIZE_ALIAS)
    pkg.__path__ = [str(arrays_dir)]
    pkg.__package__ = _MESMERIZE_ALIAS
    sys.modules[_MESMERIZE_ALIAS] = pkg
    try:
        mod = None
        for name in ("_base", "_cnmf"):
            full = f"{_MESMERIZE_ALIAS}.{name}"
            s = importlib.util.spec_from_file_location(full, arrays_dir / f"{name}.py")
            if s is None or s.loader is None:
                raise MesmerizeUnavailable(f"cannot make an import spec for {name}.py")
            mod = importlib.util.module_from_spec(s)
            sys.modules[full] = mod
            s.loader.exec_module(mod)
    except MesmerizeUnavailable:
        _forget_mesmerize()
        raise
    except Exception as exc:  # any failure of third-party code: report it, go on
        _forget_mesmerize()
        raise MesmerizeUnavailable(f"loading {arrays_dir}: {type(exc).__name__}: {exc}") from exc
    assert mod is not None
    for cls in ("LazyArrayRCM", "LazyArrayRCB", "LazyArrayResiduals"):
        if not hasattr(mod, cls):
            _forget_mesmerize()
            raise MesmerizeUnavailable(f"_cnmf.py has no {cls}")
    return mod


def _forget_mesmerize() -> None:
    for key in [k for k in sys.modules if k == _MESMERIZE_ALIAS or k.startswith(_MESMERIZE_ALIAS)]:
        del sys.modules[key]


def mesmerize_version() -> str:
    """Installed mesmerize-core version, or ``"?"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mesmerize-core")
    except PackageNotFoundError:
        return "?"
