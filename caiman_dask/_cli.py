"""The ``caiman-dask`` command: ``demo``, ``info``, ``export``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import h5py
import numpy as np

import caiman_dask as cd

from ._compute import scheduler
from ._store import CODECS, ZARR_FORMATS
from .errors import (
    CaimanDaskError,
    MissingFileError,
    OptionError,
    StoreError,
    StoreWriteError,
)

#: Exit codes: 0 success, 1 a failure while running, 2 bad arguments or input.
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _median_ms(fn: Any, n: int = 50) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise StoreError(
            f"OUT_DIR {str(out)!r} exists and is a file; the demo writes several files into a "
            "directory. Pass a new or existing directory."
        )
    if len(args.dims) not in (2, 3):
        raise OptionError(
            f"--dims {' '.join(map(str, args.dims))}: pass 2 or 3 sizes, e.g. 128 128"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreWriteError(f"cannot create OUT_DIR {str(out)!r}: {e.strerror or e}") from e
    dims = tuple(args.dims)
    print(f"caiman-dask {cd.__version__} demo -> {out}")
    t0 = time.perf_counter()
    model = cd.synthetic(
        dims=dims, T=args.frames, K=args.components, seed=args.seed, path=out / "synthetic"
    )
    print(
        f"  synthetic CNMF result written in CaImAn's formats ({time.perf_counter() - t0:.1f} s):"
    )
    for f in sorted((out / "synthetic").iterdir()):
        if f.suffix in (".hdf5", ".mmap"):
            print(f"    {f}  ({f.stat().st_size / 2**20:.1f} MiB)")
    model = cd.open_cnmf(out / "synthetic" / "synthetic.hdf5")
    print(f"  opened lazily: {model}")
    movies = {
        "rcm": cd.rcm(model, "good"),
        "rcb": cd.rcb(model),
        "residuals": cd.residuals(model),
    }
    print("  lazy movies (nothing dense materialised):")
    for name, mv in movies.items():
        d = mv.data
        print(
            f"    {name:<10} shape={mv.shape} dtype={mv.dtype} dask chunks={d.numblocks[0]} "
            f"x {d.chunksize[0]} frames, {len(d.__dask_graph__())} tasks, "
            f"{mv.nbytes / 2**30:.2f} GiB if dense"
        )
    print("  interactive frames through index pushdown (median of 50):")
    t = model.T // 2
    for name, mv in movies.items():
        ms = _median_ms(lambda mv=mv: mv[t])
        print(f"    {name}[{t}]  {ms:.3f} ms")
    # check the lazy frames against a dense float64 reference built here, from the factors
    A = model._host.A.toarray()
    good = model.components("good")
    ref = (A[:, good] @ model._host.C[good, t]).reshape(dims)
    err = float(np.abs(movies["rcm"][t] - ref).max())
    print(f"  rcm[{t}] vs dense float64 reference: max abs difference {err:.2e}")
    if err > 1e-9 * max(1.0, float(np.abs(ref).max())):
        print("  ERROR: lazy frame disagrees with the dense reference", file=sys.stderr)
        return EXIT_FAIL
    store = out / "demo.zarr"
    t0 = time.perf_counter()
    cd.to_zarr(model, store, components="good", overwrite=True, progress=False)
    print(
        f"  exported movies, exact projections and factors to {store} "
        f"({time.perf_counter() - t0:.1f} s):"
    )
    print("    " + cd.describe_store(store).replace("\n", "\n    "))
    print("  done.")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise MissingFileError(f"PATH {str(path)!r} does not exist")
    if path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        print(cd.describe_store(path))
        return EXIT_OK
    if path.suffix.lower() in (".hdf5", ".h5") and _is_cnmf(path):
        model = cd.open_cnmf(path, movie=args.movie)
        print(model)
        for name in ("A", "C", "b", "f", "W", "b0", "YrA", "S", "F_dff", "Y"):
            x = getattr(model, name)
            if x is not None:
                print(f"  {name:<6} {tuple(x.shape)} {x.dtype} chunks={x.numblocks}")
        for name, f in model.files.items():
            print(f"  {name}: {f}")
        return EXIT_OK
    src = cd.open_movie(path)
    print(
        f"{src.description}: shape={src.shape} dtype={src.data.dtype} chunks={src.data.chunksize}"
    )
    return EXIT_OK


def _is_cnmf(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "estimates" in f
    except OSError:
        return False


def _export(args: argparse.Namespace) -> int:
    cnmf = Path(args.cnmf)
    if not cnmf.exists():
        raise MissingFileError(f"CNMF file {str(cnmf)!r} does not exist")
    components: Any = args.components
    if components not in ("all", "good", "bad"):
        try:
            components = [int(x) for x in components.split(",")]
        except ValueError:
            raise OptionError(
                f"--components {components!r}: expected all, good, bad or comma-separated "
                "indices such as 0,3,7"
            ) from None
    movies = None if args.movies is None else [m.strip() for m in args.movies.split(",") if m]
    model = cd.open_cnmf(cnmf, movie=args.movie)
    t0 = time.perf_counter()
    with scheduler(args.scheduler, workers=args.workers, timeout=args.connect_timeout) as client:
        if client is not None:
            print(f"running on {client.scheduler.address} ({len(client.nthreads())} workers)")
        out = cd.to_zarr(
            model,
            args.output,
            movies=movies,
            components=components,
            projections=() if args.no_projections else ("mean", "std", "min", "max", "corr"),
            codec=args.codec,
            zarr_format=args.zarr_format,
            chunk_frames=args.chunk_frames,
            shard_frames=args.shard_frames,
            dtype=args.dtype,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    print(f"exported in {time.perf_counter() - t0:.1f} s")
    print(cd.describe_store(out))
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line of stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; pass an int >= 1"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive; pass an int >= 1")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a positive finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="caiman-dask",
        description="Lazy, exact views of CaImAn CNMF results (reconstructions, backgrounds, "
        "residuals) on dask. Errors are one line on stderr; --debug shows the traceback.",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # (--debug is accepted after the command too; SUPPRESS keeps one given before it)
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback"
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="build a synthetic CNMF result and its lazy movies", parents=[debug]
    )
    d.add_argument("out_dir", help="directory for the demo's files")
    d.add_argument("--dims", type=_positive, nargs="+", default=[128, 128], metavar="D")
    d.add_argument("--frames", type=_positive, default=2000)
    d.add_argument("--components", type=_positive, default=60)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="describe a CNMF .hdf5 file or a movie", parents=[debug])
    i.add_argument("path")
    i.add_argument("--movie", default=None, help="the movie CNMF was fitted on")
    i.set_defaults(func=_info)
    e = sub.add_parser(
        "export", help="export movies, projections and factors to zarr", parents=[debug]
    )
    e.add_argument("cnmf", help="a CaImAn cnmf.save() .hdf5 file")
    e.add_argument("--movie", default=None, help="the movie CNMF fitted (default: recorded path)")
    e.add_argument("-o", "--output", required=True, help="the .zarr store to write")
    e.add_argument("--components", default="all", help="all, good, bad or indices 0,3,7")
    e.add_argument("--movies", default=None, help="comma-separated: rcm,rcb,residuals")
    e.add_argument("--codec", default="zstd", choices=list(CODECS))
    e.add_argument("--zarr-format", type=int, default=3, choices=list(ZARR_FORMATS))
    e.add_argument("--chunk-frames", type=_positive, default=None, metavar="N")
    e.add_argument("--shard-frames", type=_positive, default=None, metavar="N")
    e.add_argument("--dtype", default=None, choices=[None, "float32", "float64"])
    e.add_argument("--no-projections", action="store_true")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a dask.distributed scheduler, e.g. tcp://10.0.0.1:8786",
    )
    e.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="start a LocalCluster with this many single-threaded workers (N >= 1)",
    )
    e.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the --scheduler address to answer (default 10)",
    )
    e.set_defaults(func=_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``caiman-dask`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "debug", False):
        return int(args.func(args))  # (a failure raises, with its traceback)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"caiman-dask {args.command}: interrupted", file=sys.stderr)
        return 130
    except CaimanDaskError as e:
        print(f"caiman-dask {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001  (the one top-level handler: no traceback)
        print(
            f"caiman-dask {args.command}: error: {type(e).__name__}: {_one_line(e)} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAIL


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
