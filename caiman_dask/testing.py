"""Testing helpers: dense float64 references and assertions (used by our tests; public so users
can check their own models the same way)."""

from __future__ import annotations

import contextlib
import filecmp
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from dask.callbacks import Callback

from ._model import CNMFModel
from ._options import choose
from ._store import MOVIE_NAMES, MovieName
from .errors import OptionError

__all__ = [
    "assert_close_scaled",
    "assert_stores_identical",
    "dense_reference",
    "raise_if_dask_computes",
]


def assert_close_scaled(actual: Any, expected: Any, rtol: float = 1e-10) -> None:
    """Assert ``|a - e| <= rtol * (|e| + max|e|)`` elementwise (NaNs must match).

    A relative test with the data's scale as a floor: residual-like images cross zero, where a
    pure relative test is meaningless; the floor keeps the test at ``rtol`` of the data's scale.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    finite = e[np.isfinite(e)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, equal_nan=True)


def dense_reference(
    model: CNMFModel, kind: MovieName = "rcm", components: Any = "all", traces: Any = None
) -> np.ndarray:
    """The whole movie ``(T, *dims)`` as a dense float64 array, by brute force (small models).

    ``kind`` is ``"rcm"``, ``"rcb"`` (low rank) or ``"residuals"``; it follows CaImAn's
    conventions literally: dense ``A`` in Fortran pixel order, ``reshape(X.T, (T,)+dims,
    order='F')``.

    Raises
    ------
    OptionError
        ``kind`` is not a movie name, or needs what the model lacks (a low-rank background
        for ``"rcb"`` and ``"residuals"``, the movie ``Y`` for ``"residuals"``).
    """
    kind = choose("kind", kind, MOVIE_NAMES)
    T, dims = model.T, model.dims
    A = np.asarray(model.A.compute().todense(), dtype=np.float64)
    C = np.asarray(model.C.compute() if traces is None else traces, dtype=np.float64)
    idx = model.components(components)
    rcm = A[:, idx] @ C[idx]
    if kind == "rcm":
        X = rcm
    else:
        if model.b is None or model.f is None:
            raise OptionError(
                f"dense_reference: kind={kind!r} needs a low-rank background (b, f), and this "
                f"model has background {model.background!r}; use kind='rcm'"
            )
        rcb = np.asarray(model.b.compute(), np.float64) @ np.asarray(model.f.compute(), np.float64)
        if kind == "rcb":
            X = rcb
        else:
            if model.Y is None:
                raise OptionError(
                    "dense_reference: kind='residuals' needs the movie Y, and this model has "
                    "none; open it with movie=... or use kind='rcm' / 'rcb'"
                )
            Y = np.asarray(model.Y.compute(), dtype=np.float64)
            Yr = np.stack([fr.ravel(order="F") for fr in Y], axis=1)
            X = Yr - rcm - rcb
    return np.reshape(X.T, (T, *dims), order="F")


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail if any dask task runs inside the block (building graphs must compute nothing)."""

    def _start(dsk: Any) -> None:
        raise AssertionError("a dask computation ran where none was expected")

    with Callback(start=_start):
        yield


def assert_stores_identical(a: Any, b: Any) -> None:
    """Assert two directory trees (e.g. zarr stores) hold the same files, byte for byte."""
    a, b = Path(a), Path(b)
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert fa == fb, f"different files: {sorted(set(fa) ^ set(fb))[:5]}"
    _, mismatch, errors = filecmp.cmpfiles(a, b, fa, shallow=False)
    assert not mismatch and not errors, f"different bytes: {(mismatch + errors)[:5]}"
