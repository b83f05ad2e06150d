"""The CNMF model: factors as chunked dask arrays, validated once, frozen.

``Y ≈ A·C + B + noise`` with ``A`` (P x K, sparse, Fortran pixel order), ``C`` (K x T), and a
background ``B`` that is low rank (``b`` P x nb, ``f`` nb x T) or CNMF-E's ring model (``W``,
``b0``). The model never computes, plots, saves or mutates; movies and projections are functions
of it (see :mod:`caiman_dask._movie`).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import scipy.sparse
import sparse
from dask.base import tokenize

from ._frame_kernels import c_to_f_permutation
from ._io import (
    MovieSource,
    check_frame_chunk,
    memmap_candidates,
    open_movie,
    read_cnmf_hdf5,
    sparse_to_scipy,
)
from ._ring import infer_ssub_B
from .errors import (
    ComponentError,
    FileFormatError,
    NaNWarning,
    OptionError,
    ShapeMismatchError,
)

__all__ = ["CNMFModel", "Components", "from_arrays", "open_cnmf"]

Components = Literal["all", "good", "bad"] | Sequence[int] | np.ndarray | slice | int
TRACE_NAMES = ("C", "YrA", "S", "F_dff")


@dataclass(frozen=True, eq=False, repr=False)
class CNMFModel:
    """A CNMF / CNMF-E result: factors as chunked dask arrays plus ``dims`` and component sets.

    Build it with :func:`open_cnmf` or :func:`from_arrays`; do not call the constructor
    directly. Shapes are validated once, on construction.

    Attributes
    ----------
    A : dask.array.Array
        Spatial footprints, ``(P, K)``, pydata-``sparse`` chunks, rows in CaImAn's Fortran pixel
        order.
    C : dask.array.Array
        Temporal traces ``(K, T)`` (with CaImAn's baselines, so possibly negative).
    dims : tuple of int
        Frame shape ``(d1, d2)`` or ``(d1, d2, d3)``.
    Y : dask.array.Array or None
        The movie CNMF was fitted on, ``(T, *dims)``.
    b, f : dask.array.Array or None
        Low-rank background: ``b`` ``(P, nb)``, ``f`` ``(nb, T)``.
    W, b0 : dask.array.Array or None
        CNMF-E ring-model background: ``W`` sparse ``(P_ds, P_ds)``, ``b0`` ``(P,)``.
    YrA, S, F_dff : dask.array.Array or None
        Residual traces, deconvolved spikes, ΔF/F — each ``(K, T)``; any may stand in for ``C``.
    idx_components, idx_components_bad : numpy.ndarray or None
        Accepted / rejected component indices (``None`` if never evaluated).
    fr : float or None
        Frame rate (Hz).
    extras : dict
        Small per-component arrays CaImAn saved (``SNR_comp``, ``r_values``, ``sn``, ...).
    files : dict
        Source files by role (``"cnmf"``, ``"movie"``).
    """

    A: da.Array
    C: da.Array
    dims: tuple[int, ...]
    Y: da.Array | None = None
    b: da.Array | None = None
    f: da.Array | None = None
    W: da.Array | None = None
    b0: da.Array | None = None
    YrA: da.Array | None = None
    S: da.Array | None = None
    F_dff: da.Array | None = None
    idx_components: np.ndarray | None = None
    idx_components_bad: np.ndarray | None = None
    fr: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, Path] = field(default_factory=dict)
    movie_source: MovieSource | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ sizes
    @property
    def P(self) -> int:
        """Number of pixels ``prod(dims)``."""
        return math.prod(self.dims)

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.A.shape[1])

    @property
    def T(self) -> int:
        """Number of frames."""
        return int(self.C.shape[1])

    @property
    def nb(self) -> int:
        """Number of low-rank background components (0 for none or the ring model)."""
        return 0 if self.b is None else int(self.b.shape[1])

    @property
    def background(self) -> Literal["lowrank", "ring", "none"]:
        """Which background model the result has."""
        if self.W is not None and self.b0 is not None:
            return "ring"
        if self.b is not None:
            return "lowrank"
        return "none"

    @cached_property
    def token(self) -> str:
        """Cheap deterministic identity (the names of the factor dask arrays)."""
        parts = [
            getattr(self, n).name if getattr(self, n) is not None else None
            for n in ("A", "C", "Y", "b", "f", "W", "b0")
        ]
        return tokenize(parts, self.dims)

    def __repr__(self) -> str:
        sets = []
        for name in ("idx_components", "idx_components_bad"):
            v = getattr(self, name)
            sets.append(f"{name}={'None' if v is None else len(v)}")
        y = "None" if self.Y is None else f"{tuple(self.Y.shape)} {self.Y.dtype}"
        return (
            f"CNMFModel(dims={self.dims}, K={self.K}, T={self.T}, background={self.background!r}"
            f", nb={self.nb}, Y={y}, {', '.join(sets)})"
        )

    # ------------------------------------------------------------------ components
    def components(self, components: Components = "all") -> np.ndarray:
        """Resolve a component selection to sorted-as-given int64 indices into ``0..K-1``.

        ``"all"``, ``"good"`` (``idx_components``), ``"bad"`` (``idx_components_bad``), an int,
        a slice, an int array (negative counts from the end), or a boolean mask of length K.

        Raises
        ------
        ComponentError
            Unknown name, undefined set, indices out of range, a mask of the wrong length.
        """
        K = self.K
        if isinstance(components, str):
            if components == "all":
                return np.arange(K, dtype=np.int64)
            if components in ("good", "bad"):
                attr = "idx_components" if components == "good" else "idx_components_bad"
                idx = getattr(self, attr)
                if idx is None:
                    raise ComponentError(
                        f"components={components!r} needs {attr}, which this model does not "
                        "have (CaImAn's evaluate_components was not run). Use 'all' or pass "
                        "indices."
                    )
                return self.components(np.asarray(idx, dtype=np.int64))
            raise ComponentError(
                f"components={components!r} is not one of 'all', 'good', 'bad'; or pass "
                "indices, a slice or a boolean mask of length K."
            )
        if isinstance(components, slice):
            return np.arange(K, dtype=np.int64)[components]
        arr = np.asarray(components)
        if arr.dtype == bool:
            if arr.shape != (K,):
                raise ComponentError(
                    f"a boolean component mask must have shape ({K},) (K components), got "
                    f"{arr.shape}"
                )
            return np.flatnonzero(arr).astype(np.int64)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.size and arr.dtype.kind not in "iu":
            raise ComponentError(
                f"component indices must be integers, got dtype {arr.dtype}; pass ints, a slice,"
                " a boolean mask or 'all' / 'good' / 'bad'."
            )
        arr = arr.astype(np.int64).ravel()
        bad = arr[(arr < -K) | (arr >= K)]
        if bad.size:
            raise ComponentError(
                f"component indices {bad[:10].tolist()} are out of range for K={K} components "
                f"(valid: 0..{K - 1}, or negative from the end)."
            )
        return np.where(arr < 0, arr + K, arr)

    # ------------------------------------------------------------------ eager factors
    @cached_property
    def _host(self) -> _HostFactors:
        """Small factors in memory, in C pixel order, for the interactive fast path."""
        with self._lock:
            return _HostFactors.load(self)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Factors and metadata (not the lock, nor the in-memory factors: rebuilt on use)."""
        state = dict(self.__dict__)
        for transient in ("_lock", "_host"):
            state.pop(transient, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_lock", threading.Lock())


@dataclass(frozen=True)
class _HostFactors:
    """In-memory factors, rows permuted to C pixel order (computed once per model)."""

    A: scipy.sparse.csr_matrix  # (P, K), C pixel order
    C: np.ndarray  # (K, T)
    b: np.ndarray | None  # (P, nb), C pixel order
    f: np.ndarray | None  # (nb, T)
    W: scipy.sparse.csr_matrix | None  # CaImAn's (Fortran order)
    b0: np.ndarray | None  # (P,), Fortran order as stored

    @classmethod
    def load(cls, m: CNMFModel) -> _HostFactors:
        perm = c_to_f_permutation(m.dims)
        Af = _sparse_compute(m.A)
        arrays = da.compute(m.C, m.b, m.f, m.b0, scheduler="sync")  # small factors; read once
        C, b, f, b0 = (None if x is None else np.asarray(x) for x in arrays)
        W = None if m.W is None else scipy.sparse.csr_matrix(_sparse_compute(m.W))
        _warn_nans(
            {"A": Af.data, "C": C, "b": b, "f": f, "b0": b0, "W": None if W is None else W.data}
        )
        return cls(
            A=scipy.sparse.csr_matrix(Af)[perm],
            C=np.asarray(C),
            b=None if b is None else np.ascontiguousarray(b[perm]),
            f=f,
            W=W,
            b0=b0,
        )


def _sparse_compute(x: da.Array) -> scipy.sparse.csc_matrix:
    blocks = x.to_delayed().ravel()
    parts = dask.compute(*blocks, scheduler="sync")
    mats = [sparse_to_scipy(p) for p in parts]
    if not mats:
        return scipy.sparse.csc_matrix(x.shape, dtype=x.dtype)
    grid = x.to_delayed().shape
    rows = [scipy.sparse.hstack(mats[i * grid[1] : (i + 1) * grid[1]]) for i in range(grid[0])]
    out = scipy.sparse.vstack(rows) if len(rows) > 1 else rows[0]
    return scipy.sparse.csc_matrix(out, shape=x.shape, dtype=x.dtype)


def _warn_nans(arrays: Mapping[str, np.ndarray | None]) -> None:
    for name, arr in arrays.items():
        if arr is None or arr.dtype.kind != "f":
            continue
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        if n_nan or n_inf:
            what = " and ".join(
                f"{n} {kind} value(s)" for n, kind in ((n_nan, "NaN"), (n_inf, "inf")) if n
            )
            warnings.warn(
                f"factor {name} has {what} of {arr.size}; every frame pixel they touch will be "
                "NaN or inf, and so will those pixels' images (mean, std, corr, min, max). Replace"
                " them (e.g. np.nan_to_num) before building the model if that is not what you "
                "want.",
                NaNWarning,
                stacklevel=4,
            )


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def _check_dims(dims: Any) -> tuple[int, ...]:
    """``dims`` as a tuple of 2 or 3 positive ints; floats are refused, never truncated."""
    if isinstance(dims, str) or not isinstance(dims, Sequence | np.ndarray):
        raise OptionError(
            f"dims={dims!r} is not a sequence; pass the frame shape (d1, d2) or (d1, d2, d3) "
            "as ints, e.g. dims=(512, 512)."
        )
    vals = list(dims)
    for d in vals:
        if isinstance(d, bool) or not isinstance(d, int | np.integer):
            raise OptionError(
                f"dims={tuple(vals)!r} holds {d!r} ({type(d).__name__}); frame dims must be "
                "ints (a float is not truncated). Pass e.g. dims=(512, 512); CaImAn's "
                "estimates.dims has the right values."
            )
    out = tuple(int(d) for d in vals)
    if len(out) not in (2, 3) or min(out) < 1:
        raise ShapeMismatchError(
            f"dims must be (d1, d2) or (d1, d2, d3) of positive ints, got {out}"
        )
    return out


def _check_fr(fr: Any) -> float | None:
    """``fr`` as a float: ``None`` or a positive finite frame rate in Hz."""
    if fr is None:
        return None
    if isinstance(fr, bool) or not isinstance(fr, int | float | np.integer | np.floating):
        raise OptionError(
            f"fr={fr!r} ({type(fr).__name__}) is not a frame rate; pass a positive number of "
            "frames per second (e.g. fr=30.0) or None."
        )
    v = float(fr)
    if not (math.isfinite(v) and v > 0):
        raise OptionError(
            f"fr={fr!r} is not a positive finite frame rate; pass the frames per second the "
            "movie was recorded at (e.g. fr=30.0), or None if unknown."
        )
    return v


def _check_indices(value: Any, name: str) -> np.ndarray | None:
    """Component indices as int64: integers only (floats are refused, never truncated)."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise ComponentError(
            f"{name} has dtype {arr.dtype} (first values {arr.ravel()[:5].tolist()}); component "
            "indices must be integers (a float is not truncated). Pass e.g. "
            f"{name}=np.array([0, 3, 7]); for a boolean mask use np.flatnonzero(mask)."
        )
    return arr.astype(np.int64).ravel()


def _validate(m: CNMFModel) -> None:
    missing = [n for n in ("A", "C") if not isinstance(getattr(m, n), da.Array)]
    if missing:
        raise ShapeMismatchError(
            f"the model needs the factor(s) {missing} (footprints A (P, K) and traces C (K, T));"
            f" got {[type(getattr(m, n)).__name__ for n in missing]}. Pass them to "
            "cd.from_arrays(A, C, dims=...)."
        )
    dims = _check_dims(m.dims)
    _check_fr(m.fr)
    P, K = m.P, m.K
    if m.A.ndim != 2:
        raise ShapeMismatchError(f"A must be 2-D (P, K), got shape {tuple(m.A.shape)}")
    if m.A.shape[0] != P:
        raise ShapeMismatchError(
            f"A has shape {tuple(m.A.shape)} ({m.A.shape[0]} pixels) but dims={dims} give "
            f"P={P} pixels; pass the dims CaImAn reported (estimates.dims)."
        )
    if m.C.ndim != 2 or m.C.shape[0] != K:
        raise ShapeMismatchError(
            f"C has shape {tuple(m.C.shape)} but A has shape {tuple(m.A.shape)}: C must be "
            f"(K, T) with K={K} rows, one per column of A."
        )
    T = m.T
    if m.Y is not None:
        ys = tuple(m.Y.shape)
        if ys[1:] != dims:
            hint = ""
            if len(ys) == 2 and ys == (P, T):
                hint = (
                    " It looks like CaImAn's Yr (P, T): pass the memmap path, or "
                    "Yr.T.reshape((T,) + dims, order='F')."
                )
            elif len(ys) - 1 != len(dims):
                hint = f" The movie is {len(ys) - 1}-D per frame but dims are {len(dims)}-D."
            raise ShapeMismatchError(
                f"movie Y has shape {ys} but (T, *dims) = ({T}, {', '.join(map(str, dims))}) "
                f"was expected.{hint}"
            )
        if ys[0] != T:
            raise ShapeMismatchError(
                f"movie Y has {ys[0]} frames (shape {ys}) but C has T={T} (shape "
                f"{tuple(m.C.shape)}); pass the movie CNMF was fitted on, or slice it to match."
            )
    if (m.b is None) != (m.f is None):
        raise ShapeMismatchError(
            "b and f come together (low-rank background b·f): got "
            f"b={'None' if m.b is None else tuple(m.b.shape)}, "
            f"f={'None' if m.f is None else tuple(m.f.shape)}"
        )
    if m.b is not None and m.f is not None:
        if m.b.ndim == 1 or m.f.ndim == 1:
            raise ShapeMismatchError(
                f"b must be (P, nb) and f (nb, T); got b {tuple(m.b.shape)}, f {tuple(m.f.shape)}"
                ". For nb=1 use b[:, None] and f[None, :]."
            )
        if m.b.shape[0] != P:
            raise ShapeMismatchError(
                f"b has shape {tuple(m.b.shape)} but dims={dims} give P={P} pixels"
            )
        if m.f.shape[0] != m.b.shape[1]:
            raise ShapeMismatchError(
                f"b has shape {tuple(m.b.shape)} (nb={m.b.shape[1]}) but f has shape "
                f"{tuple(m.f.shape)} (nb={m.f.shape[0]}); nb must agree"
            )
        if m.f.shape[1] != T:
            raise ShapeMismatchError(
                f"f has shape {tuple(m.f.shape)} but C has shape {tuple(m.C.shape)}: "
                f"T must agree ({m.f.shape[1]} vs {T})"
            )
    if (m.W is None) != (m.b0 is None):
        raise ShapeMismatchError("the ring background needs both W and b0 (CNMF-E); got only one")
    if m.W is not None and m.b0 is not None:
        if m.W.ndim != 2 or m.W.shape[0] != m.W.shape[1]:
            raise ShapeMismatchError(f"W must be square (P_ds, P_ds), got {tuple(m.W.shape)}")
        infer_ssub_B(tuple(int(x) for x in m.W.shape), dims)
        if tuple(m.b0.shape) != (P,):
            raise ShapeMismatchError(
                f"b0 has shape {tuple(m.b0.shape)} but dims={dims} give ({P},)"
            )
    for name in ("YrA", "S", "F_dff"):
        x = getattr(m, name)
        if x is not None and tuple(x.shape) != (K, T):
            raise ShapeMismatchError(
                f"{name} has shape {tuple(x.shape)} but C has shape {tuple(m.C.shape)}; "
                "traces must be (K, T)"
            )
    for name in ("idx_components", "idx_components_bad"):
        idx = getattr(m, name)
        if idx is not None and idx.size and (idx.min() < 0 or idx.max() >= K):
            raise ComponentError(
                f"{name} holds indices {idx[(idx < 0) | (idx >= K)][:10].tolist()} outside "
                f"0..{K - 1} (K={K}); the file's component lists do not match A."
            )


# ------------------------------------------------------------------------------------------
# Constructors
# ------------------------------------------------------------------------------------------


def _as_sparse_dask(A: Any, name: str) -> da.Array:
    if isinstance(A, da.Array):
        if A.ndim != 2:
            raise ShapeMismatchError(f"{name} must be 2-D, got shape {tuple(A.shape)}")
        meta = A._meta
        if isinstance(meta, np.ndarray):
            A = da.map_blocks(
                sparse.COO.from_numpy,
                A,
                dtype=A.dtype,
                meta=sparse.COO.from_numpy(np.zeros((0, 0), A.dtype)),
            )
        elif scipy.sparse.issparse(meta):
            A = da.map_blocks(
                sparse.COO.from_scipy_sparse,
                A,
                dtype=A.dtype,
                meta=sparse.COO.from_numpy(np.zeros((0, 0), A.dtype)),
            )
        return A
    if scipy.sparse.issparse(A):
        coo = sparse.COO.from_scipy_sparse(A)
    elif isinstance(A, sparse.SparseArray):
        coo = sparse.COO(A)
    else:
        arr = np.asarray(A)
        if arr.ndim != 2:
            raise ShapeMismatchError(f"{name} must be 2-D (P, K), got shape {arr.shape}")
        coo = sparse.COO.from_numpy(arr)
    if coo.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D, got shape {coo.shape}")
    return da.from_array(
        coo,
        chunks=coo.shape if min(coo.shape) else -1,
        name=f"{name}-{tokenize(coo.coords, coo.data, coo.shape)}",
        asarray=False,
        meta=sparse.COO.from_numpy(np.zeros((0, 0), dtype=coo.dtype)),
    )


def _as_dask(x: Any, name: str, time_axis: int | None = None) -> da.Array | None:
    if x is None:
        return None
    if isinstance(x, da.Array):
        return x
    if isinstance(x, str) and x == "NoneType":
        return None
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise OptionError(f"{name} must be numeric, got dtype {arr.dtype}")
    return da.from_array(arr, chunks=-1, name=f"{name}-{tokenize(arr)}")


def from_arrays(
    A: Any,
    C: Any,
    *,
    dims: Sequence[int],
    b: Any = None,
    f: Any = None,
    Y: Any = None,
    W: Any = None,
    b0: Any = None,
    YrA: Any = None,
    S: Any = None,
    F_dff: Any = None,
    idx_components: Any = None,
    idx_components_bad: Any = None,
    fr: float | None = None,
    frame_chunk: int | None = None,
    extras: Mapping[str, Any] | None = None,
) -> CNMFModel:
    """Build a model from arrays: NumPy, scipy.sparse, pydata sparse, dask, or memmaps.

    Parameters
    ----------
    A
        Footprints ``(P, K)``, pixel rows in CaImAn's Fortran order (``p = i + d1*j``).
    C
        Traces ``(K, T)``.
    dims
        Frame shape ``(d1, d2)`` or ``(d1, d2, d3)``.
    b, f
        Low-rank background ``(P, nb)``, ``(nb, T)``.
    Y
        The movie ``(T, *dims)``: an array, or any path :func:`caiman_dask.open_movie` reads.
    W, b0
        CNMF-E ring background (sparse ``(P_ds, P_ds)`` and ``(P,)``).
    YrA, S, F_dff
        Optional ``(K, T)`` trace matrices that may stand in for ``C``.
    idx_components, idx_components_bad
        Accepted / rejected component indices.
    fr
        Frame rate in Hz.
    frame_chunk
        Frames per dask chunk for Y (default about 64 MiB per chunk).

    Returns
    -------
    CNMFModel

    Raises
    ------
    ShapeMismatchError
        Shapes do not fit together (the message names both shapes).

    Examples
    --------
    >>> import numpy as np, caiman_dask as cd
    >>> A = np.zeros((12, 2)); A[0, 0] = A[5, 1] = 1.0
    >>> m = cd.from_arrays(A, np.ones((2, 7)), dims=(3, 4))
    >>> m.K, m.T, m.dims
    (2, 7, (3, 4))
    """
    for name, x in (("A", A), ("C", C)):
        if x is None:
            raise ShapeMismatchError(
                f"{name}=None: a model needs footprints A (P, K) and traces C (K, T); pass both "
                "arrays (NumPy, scipy.sparse, dask or memmap)."
            )
    dims_t = _check_dims(dims)
    fr = _check_fr(fr)
    frame_chunk = check_frame_chunk(frame_chunk)
    idx_good = _check_indices(idx_components, "idx_components")
    idx_bad = _check_indices(idx_components_bad, "idx_components_bad")
    src = None if Y is None else open_movie(Y, frame_chunk=frame_chunk)
    files: dict[str, Path] = {}
    if src is not None and src.files:
        files["movie"] = src.files[0]
    return CNMFModel(
        A=_as_sparse_dask(A, "A"),
        C=_as_dask(C, "C"),  # type: ignore[arg-type]
        dims=dims_t,
        Y=None if src is None else src.data,
        b=_as_dask(b, "b"),
        f=_as_dask(f, "f"),
        W=None if W is None else _as_sparse_dask(W, "W"),
        b0=_as_dask(
            None
            if b0 is None
            else np.asarray(b0).ravel()
            if not isinstance(b0, da.Array)
            else b0.ravel(),
            "b0",
        ),
        YrA=_as_dask(YrA, "YrA"),
        S=_as_dask(S, "S"),
        F_dff=_as_dask(F_dff, "F_dff"),
        idx_components=idx_good,
        idx_components_bad=idx_bad,
        fr=fr,
        extras=dict(extras or {}),
        files=files,
        movie_source=src,
    )


def open_cnmf(
    path: str | os.PathLike[str],
    *,
    movie: Any = None,
    dims: Sequence[int] | None = None,
    frame_chunk: int | None = None,
) -> CNMFModel:
    """Open a CaImAn ``cnmf.save()`` HDF5 result lazily, optionally with its movie.

    Parameters
    ----------
    path
        The ``.hdf5`` file written by ``cnm.save()``. Opened read-only.
    movie
        The movie CNMF was fitted on (normally the C-order memmap): a path (memmap, TIFF, HDF5,
        zarr, .npy) or an array ``(T, *dims)``. ``None`` tries the ``mmap_file`` path CaImAn
        recorded in the file, then the same file name beside ``path``; without a movie the
        model has no ``Y`` and residuals are unavailable.
    dims
        Override the dims read from the file.
    frame_chunk
        Frames per dask chunk.

    Returns
    -------
    CNMFModel

    Raises
    ------
    FileNotFoundError, FileFormatError, ShapeMismatchError
    """
    path = Path(path)
    dims_o = None if dims is None else _check_dims(dims)
    frame_chunk = check_frame_chunk(frame_chunk)
    r = read_cnmf_hdf5(path, frame_chunk=frame_chunk)
    dims_t = dims_o if dims_o is not None else r["dims"]
    for name in ("A", "C"):
        if r[name] is None:
            raise FileFormatError(
                f"{path.name}: /estimates/{name} is missing, 'NoneType' or not numeric; a CNMF "
                "result needs footprints A and traces C. Was cnmf.save() called before fit()?"
            )
    if movie is None and r.get("mmap_file"):
        for cand in memmap_candidates(path, r["mmap_file"]):
            if cand.exists():
                movie = cand
                break
    src = None if movie is None else open_movie(movie, frame_chunk=frame_chunk)
    files: dict[str, Path] = {"cnmf": path}
    if src is not None and src.files:
        files["movie"] = src.files[0]
    b0 = r["b0"]
    if b0 is not None and b0.ndim == 2 and 1 in b0.shape:
        b0 = b0.ravel()
    return CNMFModel(
        A=r["A"],
        C=r["C"],
        dims=dims_t,
        Y=None if src is None else src.data,
        b=r["b"],
        f=r["f"],
        W=r["W"],
        b0=b0,
        YrA=r["YrA"],
        S=r["S"],
        F_dff=r["F_dff"],
        idx_components=r["idx_components"],
        idx_components_bad=r["idx_components_bad"],
        fr=r["fr"],
        extras={**r["extras"], "ssub_B": r["ssub_B"]},
        files=files,
        movie_source=src,
    )
