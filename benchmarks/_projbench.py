"""Helpers of ``bench_projections.py`` and ``bench_ring.py`` (on top of :mod:`_common`).

- :func:`plain_read`: one plain read of a frame-major movie memmap (``np.sum`` over 256-frame
  chunks): the I/O floor that a streaming pass is compared with;
- :func:`run_measured_child`: run a Python snippet in a child process and sample its
  ``VmRSS`` / ``RssAnon`` / ``RssFile`` while it runs (peak RSS of one pass, free of whatever
  the parent allocated or mapped before);
- :func:`synthetic_model` (from :mod:`_common`, re-exported): like `benchmark_model` but for any
  :func:`caiman_dask.synthetic` keyword arguments (e.g. the CNMF-E ring model, float32
  factors): files written once in a child, with progress, then reused;
- :func:`compare_images`: the error columns of the projection tables.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import synthetic_model  # noqa: F401 - re-exported for bench_ring

# ---------------------------------------------------------------------------------------------
# Plain read of Y
# ---------------------------------------------------------------------------------------------


def plain_read(path: Path, T: int, P: int, chunk: int = 256) -> tuple[float, float]:
    """Seconds for one plain read of a frame-major float32 memmap ``(T, P)``; and its sum.

    A fresh ``np.memmap`` each call (so, like a fresh movie object, it maps the pages again),
    ``np.sum`` over ``chunk`` frames at a time; no ``madvise``.
    """
    mm = np.memmap(path, np.float32, "r", shape=(T, P))
    t0 = time.perf_counter()
    s = 0.0
    for t in range(0, T, chunk):
        s += float(np.sum(mm[t : t + chunk]))
    dt = time.perf_counter() - t0
    del mm
    return dt, s


# ---------------------------------------------------------------------------------------------
# A measured child process
# ---------------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


@dataclass
class ChildResult:
    """What a measured child reported (its last stdout line, JSON) and the sampled peaks."""

    report: dict[str, Any]
    peak_rss: int = 0  #: bytes, sampled VmRSS
    peak_anon: int = 0  #: bytes, sampled RssAnon (heap, NumPy buffers, ...)
    peak_file: int = 0  #: bytes, sampled RssFile (memmap pages this process touched, libraries)
    samples: int = 0
    stdout: list[str] = field(default_factory=list)


def run_measured_child(code: str, payload: dict[str, Any], interval: float = 0.05) -> ChildResult:
    """Run ``python -c code json(payload)``; sample its memory every ``interval`` seconds.

    The child must print a JSON object as its last line of stdout. Its stderr passes through.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(payload)],
        stdout=subprocess.PIPE,
        text=True,
    )
    res = ChildResult(report={})
    while proc.poll() is None:
        st = _status(proc.pid)
        if st:
            res.samples += 1
            res.peak_rss = max(res.peak_rss, st.get("VmRSS", 0))
            res.peak_anon = max(res.peak_anon, st.get("RssAnon", 0))
            res.peak_file = max(res.peak_file, st.get("RssFile", 0))
        time.sleep(interval)
    assert proc.stdout is not None
    lines = proc.stdout.read().splitlines()
    res.stdout = lines
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measured child failed (exit code {proc.returncode}): {lines[-5:]}")
    res.report = json.loads(lines[-1])
    return res


#: Child prologue: imports and a helper that reports ``VmHWM`` (the peak RSS of this process's
#: own address space), ``ru_maxrss`` and the current split. Use ``VmHWM``: on Linux
#: ``ru_maxrss`` survives ``execve``, and ``subprocess`` starts children with ``vfork``, so a
#: child's ``ru_maxrss`` starts at the *parent's* peak RSS.
CHILD_PROLOGUE = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
import caiman_dask as cd

def _mem():
    out = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, rest = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[k] = int(rest.split()[0]) * 1024
    return out

a = json.loads(sys.argv[1])
"""


# ---------------------------------------------------------------------------------------------
# Synthetic data with arbitrary keyword arguments
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Image errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageError:
    """Errors of one image against the exact one."""

    max_abs: float
    max_exact: float
    wrong: int  #: pixels with |err| > 1e-6 * max|exact|
    npix: int

    @property
    def rel(self) -> float:
        """max abs err / max |exact|."""
        return self.max_abs / self.max_exact if self.max_exact > 0 else self.max_abs


def compare_images(img: np.ndarray, exact: np.ndarray, wrong_tol: float = 1e-6) -> ImageError:
    """:class:`ImageError` of ``img`` against ``exact`` (same shape, NaNs must coincide)."""
    a = np.asarray(img, np.float64)
    e = np.asarray(exact, np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {e.shape}")
    both_nan = np.isnan(a) & np.isnan(e)
    err = np.where(both_nan, 0.0, np.abs(a - e))
    err = np.where(np.isnan(err), np.inf, err)
    scale = float(np.nanmax(np.abs(e))) if np.isfinite(e).any() else 0.0
    return ImageError(
        max_abs=float(err.max()),
        max_exact=scale,
        wrong=int(np.count_nonzero(err > wrong_tol * scale)),
        npix=int(e.size),
    )


def print_error_table(rows: list[tuple[str, str, str, ImageError]], title: str) -> None:
    """Rows ``(movie, image, source, error)`` as a plain-text table."""
    header = ("movie", "image", "source", "max abs err", "max |exact|", "rel err", "wrong px")
    lines = [
        (
            m,
            k,
            src,
            f"{e.max_abs:.3e}",
            f"{e.max_exact:.4g}",
            f"{e.rel:.2e}",
            f"{e.wrong:,} / {e.npix:,} ({100 * e.wrong / max(e.npix, 1):.2f}%)",
        )
        for m, k, src, e in rows
    ]
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]
    right = {3, 4, 5, 6}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(title)
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for x in lines:
        print(fmt(x))
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Goal table (string cells: times, errors and memory in one table)
# ---------------------------------------------------------------------------------------------


@dataclass
class GoalRow:
    """One line of the goal table; ``continued`` rows leave operation / ours blank."""

    operation: str
    ours: str
    baseline: str = ""
    base: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None
    continued: bool = False


def fmt_s(seconds: float | None) -> str:
    """Seconds as ``1.23 s`` / ``45 ms``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    return f"{1e3 * seconds:.1f} ms" if seconds >= 0.01 else f"{1e3 * seconds:.2f} ms"


def fmt_ratio(ours: float, base: float) -> str:
    """``ours / base`` with the speed-up spelled out when below 1."""
    if base <= 0 or not math.isfinite(base):
        return ""
    r = ours / base
    if r < 1:
        return f"{r:.3g}x ({1 / r:.1f}x faster)"
    return f"{r:.2f}x"


def print_goal_table(rows: list[GoalRow], title: str = "") -> None:
    """Plain-text table: operation, ours, baseline, baseline value, ratio, goal, met?"""
    header = ("operation", "ours", "baseline", "baseline value", "ratio ours/base", "goal", "met?")
    lines = [
        (
            "" if r.continued else r.operation,
            "" if r.continued else r.ours,
            r.baseline,
            r.base,
            r.ratio,
            r.goal,
            "" if r.met is None else ("YES" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]
    right = {1, 3, 4}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    if title:
        print(title)
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for x in lines:
        print(fmt(x))
    sys.stdout.flush()
