"""Run every ``benchmarks/bench_*.py`` and write their result tables into ``benchmarks/README.md``.

Each benchmark runs as a subprocess (``python bench_X.py [--quick]``), one after the other.
Its result tables — everything it prints after its last ``=====`` separator line (its whole
output if it prints none) — replace the
part of ``README.md`` between ``<!-- results:start -->`` and ``<!-- results:end -->``, under a
header naming the date, the machine (CPUs, RAM), the load average, the git commit and whether
``--quick`` was used. A benchmark that fails (non-zero exit, timeout) does not stop the run:
its error and the tail of its output are recorded in its place. With ``--only``, only those
benchmarks' subsections are replaced and the others are kept. Full logs go to
``benchmarks/.data/logs/``.

Usage::

    python benchmarks/run_all.py                    # full size (long: tens of minutes)
    python benchmarks/run_all.py --quick            # small sizes, a few minutes
    python benchmarks/run_all.py --quick --only frames scaling
    python benchmarks/run_all.py --quick --no-write # print, leave README.md alone
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
LOG_DIR = HERE / ".data" / "logs"
START = "<!-- results:start -->"
END = "<!-- results:end -->"
SEPARATOR = re.compile(r"^={40,}\s*$")


@dataclass
class Outcome:
    """What one benchmark run produced."""

    name: str
    returncode: int | None  #: ``None``: timed out
    seconds: float
    stdout: str
    stderr: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.error


def discover() -> list[str]:
    """Names (``frames``, ``projections``, ...) of the ``bench_*.py`` scripts, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def _normalise(name: str) -> str:
    return Path(name).stem.removeprefix("bench_")


def run_one(name: str, quick: bool, timeout: float | None) -> Outcome:
    """Run ``bench_<name>.py`` in a subprocess; capture its output (also written to a log)."""
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(["--quick"] if quick else [])]
    print(f"[run_all] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent, check=False
        )
        out = Outcome(name, proc.returncode, time.perf_counter() - t0, proc.stdout, proc.stderr)
        if proc.returncode != 0:
            out.error = f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired as exc:

        def text(x: str | bytes | None) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

        out = Outcome(
            name,
            None,
            time.perf_counter() - t0,
            text(exc.stdout),
            text(exc.stderr),
            f"timed out after {timeout:g} s",
        )
    except OSError as exc:
        out = Outcome(name, None, time.perf_counter() - t0, "", "", f"could not start: {exc}")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"bench_{name}{'_quick' if quick else ''}.log"
    log.write_text(
        f"$ {' '.join(cmd)}\n# {out.error or 'ok'}; {out.seconds:.0f} s\n\n"
        f"{out.stdout}\n--- stderr ---\n{out.stderr}"
    )
    status = "ok" if out.ok else f"FAILED ({out.error})"
    print(f"[run_all]   {name}: {status} in {out.seconds:.0f} s; log {log}", flush=True)
    return out


def tables(stdout: str) -> tuple[str, bool]:
    """The result part of a benchmark's output, and whether it had a separator line.

    The lines after its last ``=====`` line; without one, its whole output (at most the last
    80 lines), header included.
    """
    lines = stdout.rstrip().splitlines()
    last = max((i for i, line in enumerate(lines) if SEPARATOR.match(line)), default=None)
    if last is None:
        return "\n".join(lines[-80:]).strip("\n"), False
    return "\n".join(lines[last + 1 :]).strip("\n"), True


def _bench_header(stdout: str) -> str:
    """The benchmark's title line and its load-average line (from its machine header)."""
    lines = stdout.splitlines()
    keep = lines[:1] + [ln.strip() for ln in lines[1:8] if "load average" in ln]
    return "\n".join(keep)


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def _load() -> str:
    la = os.getloadavg()
    return f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("caiman-dask", "numpy", "scipy", "numba", "dask", "zarr", "mesmerize-core"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    return ", ".join(parts)


def _bench_start(name: str) -> str:
    return f"<!-- bench:{name} -->"


def _bench_end(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def existing_subsections() -> dict[str, str]:
    """The per-benchmark subsections currently in README.md, by benchmark name."""
    if not README.exists():
        return {}
    text = README.read_text()
    out: dict[str, str] = {}
    for m in re.finditer(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", text, re.S):
        out[m.group(1)] = m.group(2).strip("\n") + "\n"
    return out


def render_one(o: Outcome, quick: bool, started: dt.datetime) -> str:
    """One benchmark's subsection (without its markers)."""
    body = [f"#### `bench_{o.name}.py{' --quick' if quick else ''}`", ""]
    when = started.strftime("%Y-%m-%d %H:%M UTC")
    if o.ok:
        body += [f"Ran in {o.seconds:.0f} s (run of {when}).", "", "```"]
        text, separated = tables(o.stdout)
        hdr = _bench_header(o.stdout) if separated else ""
        if hdr:
            body += [hdr, ""]
        body += [text, "```"]
    else:
        body += [
            f"**FAILED** (run of {when}): {o.error} after {o.seconds:.0f} s. Last output:",
            "",
            "```",
        ]
        tail = (o.stdout.rstrip().splitlines()[-15:]) + (
            ["--- stderr ---", *o.stderr.rstrip().splitlines()[-25:]] if o.stderr else []
        )
        body += ["\n".join(tail), "```"]
    return "\n".join(body).rstrip() + "\n"


def render(
    outcomes: list[Outcome],
    quick: bool,
    started: dt.datetime,
    load_start: str,
    kept: dict[str, str] | None = None,
) -> str:
    """The Markdown that goes between the result markers.

    ``kept``: subsections of benchmarks that were not run this time (``--only``), reused from
    the previous README in their place.
    """
    kept = kept or {}
    total = sum(o.seconds for o in outcomes)
    head = [
        f"Generated by `python benchmarks/run_all.py{' --quick' if quick else ''}` on "
        f"{started.strftime('%Y-%m-%d %H:%M UTC')} — "
        f"{'**--quick** (small sizes)' if quick else '**full size**'}.",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs ({_cpu_model()}), {_ram_gib()}, "
        f"{platform.system()} {platform.release()}",
        f"- load average (1 / 5 / 15 min): {load_start} at start, {_load()} at end "
        "(other processes may share the machine)",
        f"- git commit: `{_git_commit()}`",
        f"- {_versions()}",
        f"- benchmarks: {', '.join(o.name for o in outcomes)}; total {total / 60:.1f} min; "
        + (
            "all succeeded"
            if all(o.ok for o in outcomes)
            else "FAILED: " + ", ".join(o.name for o in outcomes if not o.ok)
        ),
    ]
    if kept:
        head.append(
            f"- partial run (`--only`): {', '.join(sorted(kept))} kept from an earlier run (its "
            "date, size and machine state are in its own subsection)"
        )
    head.append("")
    ran = {o.name: render_one(o, quick, started) for o in outcomes}
    body: list[str] = []
    for name in sorted({*ran, *kept}):
        body += [_bench_start(name), ran.get(name) or kept[name], _bench_end(name), ""]
    return "\n".join(head + body).rstrip() + "\n"


def write_readme(section: str) -> None:
    """Replace the text between the markers of README.md (append the markers if missing)."""
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{START}\n{section}{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        i, j = text.index(START), text.index(END) + len(END)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return 1 if any failed (the README is written either way)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these (frames, bench_frames or bench_frames.py; default: all)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per benchmark before it is recorded as failed (default: 900 with --quick, "
        "none otherwise)",
    )
    p.add_argument("--no-write", action="store_true", help="print the section, keep README.md")
    args = p.parse_args(argv)

    names = discover()
    if args.only:
        wanted = [_normalise(n) for n in args.only]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            p.error(f"unknown benchmark(s) {unknown}; available: {names}")
        names = [n for n in names if n in wanted]
    timeout = args.timeout if args.timeout is not None else (900.0 if args.quick else None)

    started = dt.datetime.now(dt.UTC)
    load_start = _load()
    outcomes = [run_one(n, args.quick, timeout) for n in names]
    kept = {k: v for k, v in existing_subsections().items() if k not in names} if args.only else {}
    section = render(outcomes, args.quick, started, load_start, kept)
    if args.no_write:
        print(section)
    else:
        write_readme(section)
        print(f"[run_all] wrote the results section of {README}", flush=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
