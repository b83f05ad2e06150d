"""Testing helpers: dense float64 references and assertions (used by our tests; public so users
can check their own models the same way)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._model import CNMFModel

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
    model: CNMFModel, kind: str = "rcm", components: Any = "all", traces: Any = None
) -> np.ndarray:
    """The whole movie ``(T, *dims)`` as a dense float64 array, by brute force (small models).

    ``kind`` is ``"rcm"``, ``"rcb"`` (low rank) or ``"residuals"``; it follows CaImAn's
    conventions literally: dense ``A`` in Fortran pixel order, ``reshape(X.T, (T,)+dims,
    order='F')``.
    """
    T, dims = model.T, model.dims
    A = np.asarray(model.A.compute().todense(), dtype=np.float64)
    C = np.asarray(model.C.compute() if traces is None else traces, dtype=np.float64)
    idx = model.components(components)
    rcm = A[:, idx] @ C[idx]
    if kind == "rcm":
        X = rcm
    else:
        if model.b is None or model.f is None:
            raise ValueError("dense_reference: kind needs a low-rank background")
        rcb = np.asarray(model.b.compute(), np.float64) @ np.asarray(model.f.compute(), np.float64)
        if kind == "rcb":
            X = rcb
        elif kind == "residuals":
            assert model.Y is not None
            Y = np.asarray(model.Y.compute(), dtype=np.float64)
            Yr = np.stack([fr.ravel(order="F") for fr in Y], axis=1)
            X = Yr - rcm - rcb
        else:
            raise ValueError(f"kind={kind!r}: expected 'rcm', 'rcb' or 'residuals'")
    return np.reshape(X.T, (T, *dims), order="F")


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail if any dask task runs inside the block (building graphs must compute nothing)."""
    from dask.callbacks import Callback

    def _start(dsk: Any) -> None:
        raise AssertionError("a dask computation ran where none was expected")

    with Callback(start=_start):
        yield


def assert_stores_identical(a: Any, b: Any) -> None:
    """Assert two directory trees (e.g. zarr stores) hold the same files, byte for byte."""
    import filecmp
    from pathlib import Path

    a, b = Path(a), Path(b)
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert fa == fb, f"different files: {sorted(set(fa) ^ set(fb))[:5]}"
    _, mismatch, errors = filecmp.cmpfiles(a, b, fa, shallow=False)
    assert not mismatch and not errors, f"different bytes: {(mismatch + errors)[:5]}"
