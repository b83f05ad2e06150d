"""Make the minian test fixture: stores written by minian's own ``save_minian``.

Run once, by hand, in an environment that has minian (from PyPI; never imported by
caiman_dask or by its tests)::

    python -m venv /tmp/mn && /tmp/mn/bin/pip install minian
    /tmp/mn/bin/python tests/data/make_minian.py

minian's CNMF needs an interactive parameter search to run on a new movie, so this script does
not run minian's pipeline: it builds a seeded ground-truth result of minian's shape
(``A (unit_id, height, width)``, ``C``, ``S``, ``b0``, ``c0`` ``(unit_id, frame)``, ``b
(height, width)``, ``f (frame,)``) and the movie ``Y_fm_chk (frame, height, width)`` =
``A·(C + b0 + c0) + b·f`` plus noise, as ``xarray.DataArray`` with minian's dimension names and
coordinates, and writes each with ``minian.utilities.save_minian`` into
``tests/data/minian/``: exactly the zarr layout minian's pipeline leaves (one ``<name>.zarr``
xarray dataset per variable). Unit ids are not ``0..K-1`` (minian drops units as it goes).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "minian"
H, W, T, K = 30, 38, 120, 6


def main() -> int:
    import xarray as xr  # only this script needs them
    from minian.utilities import save_minian

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:H, :W]
    centers = np.column_stack([rng.uniform(5, H - 5, K), rng.uniform(5, W - 5, K)])
    centers[1] = centers[0] + (2.5, 2.0)  # an overlapping pair
    A = np.exp(
        -((yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2)
        / (2 * 2.2**2)
    )
    A[A < 0.05] = 0.0
    S = (rng.random((K, T)) < 0.04) * rng.uniform(0.5, 2.0, (K, T))
    C = np.zeros((K, T))
    for t in range(T):
        C[:, t] = (0.92 * C[:, t - 1] if t else 0) + S[:, t]
    b0 = np.repeat(rng.uniform(0.0, 0.3, (K, 1)), T, axis=1)
    c0 = rng.uniform(0, 0.5, (K, 1)) * 0.9 ** np.arange(T)[None]
    b = 5.0 + rng.random((H, W))
    f = 1.0 + 0.1 * np.sin(np.arange(T) / 15.0)
    Y = np.einsum("kyx,kt->tyx", A, C + b0 + c0) + b[None] * f[:, None, None]
    Y = (Y + rng.normal(0, 0.05, Y.shape)).astype(np.float32)
    uid = np.array([3, 5, 8, 9, 14, 20])
    frame = np.arange(T)
    coords_a = {"unit_id": uid, "height": np.arange(H), "width": np.arange(W)}
    coords_t = {"unit_id": uid, "frame": frame}
    arrays = [
        xr.DataArray(
            A.astype(np.float32), dims=("unit_id", "height", "width"), coords=coords_a, name="A"
        ),
        xr.DataArray(C.astype(np.float32), dims=("unit_id", "frame"), coords=coords_t, name="C"),
        xr.DataArray(S.astype(np.float32), dims=("unit_id", "frame"), coords=coords_t, name="S"),
        xr.DataArray(b0.astype(np.float32), dims=("unit_id", "frame"), coords=coords_t, name="b0"),
        xr.DataArray(c0.astype(np.float32), dims=("unit_id", "frame"), coords=coords_t, name="c0"),
        xr.DataArray(
            b.astype(np.float32),
            dims=("height", "width"),
            coords={"height": np.arange(H), "width": np.arange(W)},
            name="b",
        ),
        xr.DataArray(f.astype(np.float32), dims=("frame",), coords={"frame": frame}, name="f"),
        xr.DataArray(
            Y,
            dims=("frame", "height", "width"),
            coords={"frame": frame, "height": np.arange(H), "width": np.arange(W)},
            name="Y_fm_chk",
        ),
    ]
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for arr in arrays:
        chunks = {"unit_id": 4} if "unit_id" in arr.dims else {}
        if "frame" in arr.dims:
            chunks["frame"] = 50
        save_minian(arr.chunk(chunks), str(OUT), overwrite=True)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
