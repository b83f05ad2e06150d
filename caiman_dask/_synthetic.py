"""Realistic synthetic CNMF results (and CaImAn-format files) for demos, tests and benchmarks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse

from ._model import CNMFModel, _check_dims, _check_fr, from_arrays, open_cnmf
from .errors import OptionError

__all__ = ["synthetic", "write_cnmf_hdf5"]


def _footprints(
    rng: np.random.Generator, dims: tuple[int, ...], K: int, footprint_px: float, overlap: float
) -> scipy.sparse.csc_matrix:
    """K elliptical Gaussian blobs (unit L2 norm), ~``footprint_px`` pixels each, Fortran rows."""
    nd = len(dims)
    # radius of a disc / ball holding footprint_px pixels; Gaussians cut at 2.3 sigma
    if nd == 2:
        radius = math.sqrt(footprint_px / math.pi)
    else:
        radius = (3 * footprint_px / (4 * math.pi)) ** (1 / 3)
    sigma0 = radius / 2.3
    centres = np.empty((K, nd))
    margin = np.minimum(radius, (np.asarray(dims) - 1) / 2)
    for k in range(K):
        if k and rng.random() < overlap:
            # a partner close to an earlier cell: centres 0.6-1.0 radius apart
            other = centres[rng.integers(0, k)]
            direction = rng.normal(size=nd)
            direction /= np.linalg.norm(direction) + 1e-12
            c = other + direction * radius * rng.uniform(0.6, 1.0)
            centres[k] = np.clip(c, margin * 0, np.asarray(dims) - 1)
        else:
            centres[k] = rng.uniform(margin * 0.5, np.asarray(dims) - 1 - margin * 0.5)
    cols_idx: list[np.ndarray] = []
    cols_val: list[np.ndarray] = []
    ext = math.ceil(2.3 * sigma0 * 1.3) + 1
    for k in range(K):
        sig = sigma0 * rng.uniform(0.8, 1.25, size=nd)
        rot = np.linalg.qr(rng.normal(size=(nd, nd)))[0]
        cov_inv = rot @ np.diag(1 / sig**2) @ rot.T
        lo = np.maximum(np.floor(centres[k] - ext).astype(int), 0)
        hi = np.minimum(np.ceil(centres[k] + ext).astype(int) + 1, dims)
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        d = np.stack([g - c for g, c in zip(grids, centres[k], strict=True)], axis=-1)
        q = np.einsum("...i,ij,...j->...", d, cov_inv, d)
        val = np.exp(-0.5 * q)
        keep = q <= 2.3**2
        if not keep.any():
            keep = q == q.min()
        coords = tuple(g[keep] for g in grids)
        p = np.ravel_multi_index(coords, dims, order="F")
        v = val[keep]
        order = np.argsort(p)
        cols_idx.append(p[order])
        cols_val.append(v[order] / np.linalg.norm(v))
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols_idx])]).astype(np.int64)
    P = math.prod(dims)
    if K == 0:
        return scipy.sparse.csc_matrix((P, 0))
    return scipy.sparse.csc_matrix(
        (np.concatenate(cols_val), np.concatenate(cols_idx), indptr), shape=(P, K)
    )


def _lfilter(b: Sequence[float], a: Sequence[float], x: np.ndarray) -> np.ndarray:
    """``scipy.signal.lfilter(b, a, x, axis=-1)`` for ``a[0] == 1``, bit for bit.

    The same direct form II transposed recursion, with the same operations in the same order,
    vectorised over the leading axes (importing ``scipy.signal`` would cost about a second in
    every process that imports caiman_dask, cluster workers included).
    """
    n = max(len(a), len(b))
    bb = [float(v) for v in b] + [0.0] * (n - len(b))
    aa = [float(v) for v in a] + [0.0] * (n - len(a))
    x = np.asarray(x, dtype=np.float64)
    y = np.empty_like(x)
    z = [np.zeros(x.shape[:-1]) for _ in range(n - 1)]
    for t in range(x.shape[-1]):
        xt = x[..., t]
        yt = z[0] + bb[0] * xt
        for k in range(n - 2):
            z[k] = z[k + 1] + xt * bb[k + 1] - yt * aa[k + 1]
        z[n - 2] = xt * bb[n - 1] - yt * aa[n - 1]
        y[..., t] = yt
    return y


def _traces(rng: np.random.Generator, K: int, T: int, fr: float) -> tuple[np.ndarray, np.ndarray]:
    """AR(2) calcium traces with sparse spikes and CaImAn-like (often negative) baselines."""
    rate = rng.uniform(0.008, 0.03, size=(K, 1))
    spikes = (rng.random((K, T)) < rate) * rng.lognormal(0.0, 0.5, size=(K, T))
    g = (1.7, -0.712)
    C = _lfilter([1.0], [1.0, -g[0], -g[1]], spikes)
    amplitude = rng.uniform(28, 60, size=(K, 1))
    baseline = rng.uniform(-40, 5, size=(K, 1))
    C = C * amplitude + baseline
    return C, spikes


def _background(
    rng: np.random.Generator, dims: tuple[int, ...], T: int, nb: int, fr: float
) -> tuple[np.ndarray, np.ndarray]:
    nd = len(dims)
    grids = np.meshgrid(*[np.linspace(-1, 1, d) for d in dims], indexing="ij")
    cols = []
    for i in range(nb):
        c = rng.uniform(-0.6, 0.6, size=nd)
        w = rng.uniform(0.5, 1.2)
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True))
        img = (80.0 if i == 0 else 30.0) * np.exp(-r2 / (2 * w**2)) + (40.0 if i == 0 else 0.0)
        cols.append(img.ravel(order="F"))
    b = np.stack(cols, axis=1) if nb else np.zeros((math.prod(dims), 0))
    t = np.arange(T) / fr
    f = np.empty((nb, T))
    for i in range(nb):
        slow = _lfilter([0.02], [1, -0.98], rng.normal(size=T))
        f[i] = 1.0 + 0.15 * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 6)) + slow
    return b, f


def synthetic(
    dims: Sequence[int] = (128, 128),
    T: int = 2000,
    K: int = 60,
    *,
    seed: int = 0,
    nb: int = 2,
    footprint_px: float = 150.0,
    overlap: float = 0.25,
    noise: float = 6.0,
    good_fraction: float = 0.8,
    fr: float = 30.0,
    dtype: Any = np.float64,
    ring_ssub: int | None = None,
    ring_radius: float = 9.0,
    path: str | os.PathLike[str] | None = None,
    frame_chunk: int | None = None,
) -> CNMFModel:
    """A realistic synthetic CNMF result and its movie ``Y = A·C + b·f + noise``.

    Footprints are elliptical Gaussians of about ``footprint_px`` pixels (unit L2 norm, a
    fraction ``overlap`` placed to overlap an earlier cell), traces are AR(2) calcium
    transients with CaImAn-like baselines (often negative, as CaImAn's ``C`` with
    ``bas_nonneg=False``), the background is ``nb`` smooth components with slow time courses,
    and the noise is Gaussian. About ``good_fraction`` of the components are listed in
    ``idx_components``.

    Parameters
    ----------
    dims
        ``(d1, d2)`` or ``(d1, d2, d3)``.
    T, K
        Frames and components.
    seed
        Seed of ``numpy.random.default_rng``; the result is a pure function of the arguments.
    dtype
        dtype of the factors (the movie is always float32, like CaImAn's memmaps).
    ring_ssub
        If given, a CNMF-E-like result: the movie's background is still ``nb`` smooth
        components, but the model describes it, as CNMF-E does, by a ring model: ``b0`` (the
        background's temporal mean) and a ring weight matrix ``W`` on a grid downsampled by
        ``ring_ssub`` (uniform weights on the pixels at distance ``ring_radius`` ± 0.5 px, in
        CaImAn's Fortran order); ``b`` and ``f`` are then ``None``.
    ring_radius
        Ring radius in full-resolution pixels.
    path
        If given, a directory: write CaImAn-format files there (``synthetic.hdf5`` laid out like
        ``cnmf.save()`` and the movie as a frame-major CaImAn memmap
        ``synthetic_d1_.._order_F_frames_T.mmap``) and return the model opened from them, so
        nothing large lives in memory or in task graphs. Existing files are reused when they
        were written with the same arguments.

    Returns
    -------
    CNMFModel

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(32, 40), T=100, K=8, seed=1)
    >>> m.Y.shape, m.K, m.nb
    ((100, 32, 40), 8, 2)
    """
    ints = {"T": T, "K": K, "nb": nb, "seed": seed}
    for name, v in ints.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise OptionError(
                f"synthetic: {name}={v!r} ({type(v).__name__}) must be an int; a float is not "
                "truncated."
            )
    dims_t = _check_dims(dims) if len(tuple(dims)) in (2, 3) else tuple(dims)
    if len(dims_t) not in (2, 3) or min(dims_t) < 1 or T < 1 or K < 0 or nb < 0:
        raise OptionError(
            f"synthetic needs dims of 2 or 3 positive ints, T >= 1, K >= 0, nb >= 0; got "
            f"dims={dims}, T={T}, K={K}, nb={nb}"
        )
    _check_fr(fr)
    if not 0.0 <= good_fraction <= 1.0:
        raise OptionError(f"synthetic: good_fraction={good_fraction!r} must lie in [0, 1]")
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise OptionError(
            f"synthetic: path={str(path)!r} is a file; pass a directory for the CaImAn-format "
            "files (it is created if missing)."
        )
    rng = np.random.default_rng(seed)
    A = _footprints(rng, dims_t, K, footprint_px, overlap)
    C, S = _traces(rng, K, T, fr)
    b, f = _background(rng, dims_t, T, nb, fr)
    order = rng.permutation(K)
    n_good = round(good_fraction * K)
    good, bad = np.sort(order[:n_good]), np.sort(order[n_good:])
    A = A.astype(dtype)
    C, S, b, f = (x.astype(dtype) for x in (C, S, b, f))
    noise_seed = int(rng.integers(2**31))
    ring: dict[str, Any] = {}
    if ring_ssub is not None:
        ring = {
            "W": ring_weights(dims_t, int(ring_ssub), ring_radius).astype(dtype),
            "b0": (b @ f.mean(axis=1)).astype(dtype),
        }
    if path is None:
        Y = np.empty((T, *dims_t), np.float32)
        for t0, t1, rows in _movie_blocks(A, C, b, f, noise, noise_seed):
            Y[t0:t1] = rows.reshape((t1 - t0, *dims_t[::-1])).transpose(
                0, *range(len(dims_t), 0, -1)
            )
        return from_arrays(
            A,
            C,
            dims=dims_t,
            b=None if ring else b,
            f=None if ring else f,
            **ring,
            Y=Y,
            S=S,
            idx_components=good,
            idx_components_bad=bad,
            fr=fr,
            frame_chunk=frame_chunk,
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    d3 = dims_t[2] if len(dims_t) == 3 else 1
    mmap = out / f"synthetic_d1_{dims_t[0]}_d2_{dims_t[1]}_d3_{d3}_order_F_frames_{T}.mmap"
    h5 = out / "synthetic.hdf5"
    stamp = out / "synthetic.args"
    args = repr(
        (
            dims_t,
            T,
            K,
            seed,
            nb,
            footprint_px,
            overlap,
            noise,
            good_fraction,
            fr,
            np.dtype(dtype).str,
            ring_ssub,
            ring_radius,
        )
    )
    if not (stamp.exists() and stamp.read_text() == args and mmap.exists() and h5.exists()):
        stamp.unlink(missing_ok=True)
        raw = np.memmap(mmap, np.float32, "w+", shape=(T, math.prod(dims_t)))
        for t0, t1, rows in _movie_blocks(A, C, b, f, noise, noise_seed):
            raw[t0:t1] = rows
        raw.flush()
        del raw
        write_cnmf_hdf5(
            h5,
            A=A,
            C=C,
            b=None if ring else b,
            f=None if ring else f,
            **ring,
            S=S,
            dims=dims_t,
            idx_components=good,
            idx_components_bad=bad,
            fr=fr,
            mmap_file=str(mmap),
        )
        stamp.write_text(args)
    return open_cnmf(h5, movie=mmap, frame_chunk=frame_chunk)


def _movie_blocks(
    A: scipy.sparse.csc_matrix,
    C: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    noise: float,
    seed: int,
    block: int = 64,
) -> Any:
    """Yield ``(t0, t1, rows)``: frames of ``Y = A·C + b·f + noise``, float32 ``(n, P)``.

    Each row is one frame with pixels in Fortran order (a frame-major CaImAn memmap's layout).
    """
    T = C.shape[1]
    rng = np.random.default_rng(seed)
    Acsr = scipy.sparse.csr_matrix(A, dtype=np.float64)
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        Yr = Acsr @ C[:, t0:t1].astype(np.float64) + b.astype(np.float64) @ f[:, t0:t1]
        Yr += rng.normal(scale=noise, size=Yr.shape)
        yield t0, t1, np.ascontiguousarray(Yr.T, dtype=np.float32)


def ring_weights(dims: Sequence[int], ssub: int, radius: float) -> scipy.sparse.csr_matrix:
    """A CNMF-E-like ring weight matrix on the grid ``ceil(dims / ssub)``, Fortran order.

    Row ``q`` holds equal weights (summing to 1) on the grid pixels whose distance from ``q``
    is within 0.5 of ``radius / ssub`` (at least 1), like CaImAn's ring of ``ring_size_factor
    * gSiz`` pixels.
    """
    dds = tuple(-(-int(d) // ssub) for d in dims)
    r = max(1.0, radius / ssub)
    span = math.ceil(r + 0.5)
    grids = np.meshgrid(*[np.arange(-span, span + 1)] * len(dds), indexing="ij")
    dist = np.sqrt(sum(g.astype(float) ** 2 for g in grids))
    ring = (dist >= r - 0.5) & (dist < r + 0.5)
    offsets = np.stack([g[ring] for g in grids], axis=1)
    coords = np.stack(np.unravel_index(np.arange(math.prod(dds)), dds, order="F"), axis=1)
    rows, cols = [], []
    for off in offsets:
        nb = coords + off
        ok = np.all((nb >= 0) & (nb < np.asarray(dds)), axis=1)
        rows.append(np.flatnonzero(ok))
        cols.append(np.ravel_multi_index(tuple(nb[ok].T), dds, order="F"))
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    counts = np.bincount(row, minlength=math.prod(dds)).astype(float)
    W = scipy.sparse.csr_matrix((1.0 / counts[row], (row, col)), shape=(len(counts),) * 2)
    W.sort_indices()
    return W


def write_cnmf_hdf5(
    path: str | os.PathLike[str],
    *,
    A: scipy.sparse.spmatrix,
    C: np.ndarray,
    dims: Sequence[int],
    b: np.ndarray | None = None,
    f: np.ndarray | None = None,
    W: scipy.sparse.spmatrix | None = None,
    b0: np.ndarray | None = None,
    S: np.ndarray | None = None,
    YrA: np.ndarray | None = None,
    F_dff: np.ndarray | None = None,
    idx_components: np.ndarray | None = None,
    idx_components_bad: np.ndarray | None = None,
    fr: float | None = None,
    mmap_file: str | None = None,
) -> Path:
    """Write factors in the layout of CaImAn's ``cnmf.save()`` (the subset caiman_dask reads).

    Sparse matrices as CSC groups (``data``, ``indices``, ``indptr``, ``shape``), ``None`` as
    the string ``'NoneType'``, dims at ``/dims`` and ``/estimates/dims``.
    """
    path = Path(path)
    none = "NoneType"
    with h5py.File(path, "w") as h:
        est = h.create_group("estimates")

        def put(name: str, value: Any) -> None:
            if value is None:
                est.create_dataset(name, data=none, dtype=h5py.string_dtype())
            elif scipy.sparse.issparse(value):
                m = scipy.sparse.csc_matrix(value)
                g = est.create_group(name)
                g.create_dataset("data", data=m.data)
                g.create_dataset("indices", data=m.indices.astype(np.int32))
                g.create_dataset("indptr", data=m.indptr.astype(np.int32))
                g.create_dataset("shape", data=np.asarray(m.shape, dtype=np.int64))
            else:
                est.create_dataset(name, data=np.asarray(value))

        for name, value in (
            ("A", A),
            ("C", C),
            ("b", b),
            ("f", f),
            ("W", W),
            ("b0", b0),
            ("S", S),
            ("YrA", YrA),
            ("F_dff", F_dff),
        ):
            put(name, value)
        for name, value in (
            ("idx_components", idx_components),
            ("idx_components_bad", idx_components_bad),
        ):
            put(name, None if value is None else np.asarray(value, dtype=np.int64))
        est.create_dataset("dims", data=np.asarray(dims, dtype=np.int64))
        h.create_dataset("dims", data=np.asarray(dims, dtype=np.int64))
        data = h.create_group("params/data")
        if fr is None:
            data.create_dataset("fr", data=none, dtype=h5py.string_dtype())
        else:
            data.create_dataset("fr", data=fr)
        if mmap_file is not None:
            h.attrs["mmap_file"] = mmap_file
    return path
