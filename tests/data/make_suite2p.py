"""Make the suite2p test fixture: real suite2p output on a small synthetic movie.

Run once, by hand, in an environment that has suite2p (GPL, from PyPI; it is never imported by
caiman_dask or by the tests)::

    python -m venv /tmp/s2p && /tmp/s2p/bin/pip install torch==2.13.0 suite2p tifffile
    /tmp/s2p/bin/python tests/data/make_suite2p.py

It writes a seeded synthetic two-photon movie (48 x 56 pixels, non-square on purpose, 300
frames, 14 Gaussian cells of which some overlap, a slow neuropil and Poisson-like noise) to a
TIFF in a temporary folder, runs suite2p's whole pipeline on it (rigid registration, sparsery
detection, extraction, builtin classifier, deconvolution) on the CPU, and copies the small
outputs of ``plane0`` the tests need into ``tests/data/suite2p/plane0/``: ``stat.npy``,
``F.npy``, ``Fneu.npy``, ``spks.npy``, ``iscell.npy``, ``ops.npy`` (the pre-1.0 layout, which
suite2p >= 1.0 still writes as ``save_ops_orig``), ``db.npy``, ``settings.npy``,
``reg_outputs.npy``, ``detect_outputs.npy`` (the >= 1.0 layout) and the registered movie
``data.bin`` (int16, frame-major ``(T, Ly, Lx)``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "suite2p" / "plane0"
LY, LX, T, K = 48, 56, 300, 14
KEEP = (
    "stat.npy",
    "F.npy",
    "Fneu.npy",
    "spks.npy",
    "iscell.npy",
    "ops.npy",
    "db.npy",
    "settings.npy",
    "reg_outputs.npy",
    "detect_outputs.npy",
    "data.bin",
)


def synthetic_movie(seed: int = 0) -> np.ndarray:
    """A seeded (T, LY, LX) uint16 movie: Gaussian cells with calcium transients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:LY, :LX]
    centers = np.column_stack([rng.uniform(6, LY - 6, K), rng.uniform(6, LX - 6, K)])
    centers[1] = centers[0] + (3.0, 2.5)  # two overlapping pairs
    centers[3] = centers[2] + (-2.5, 3.0)
    sig = rng.uniform(1.8, 2.6, K)
    A = np.exp(
        -((yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2)
        / (2 * sig[:, None, None] ** 2)
    )
    spikes = rng.random((K, T)) < 0.03
    C = np.zeros((K, T))
    for t in range(T):
        C[:, t] = (0.9 * C[:, t - 1] if t else 0) + spikes[:, t] * rng.uniform(1, 3, K)
    neuropil = 0.3 * (1 + np.sin(np.arange(T) / 40.0))
    clean = 200 + 400 * np.einsum("kyx,kt->tyx", A, C) + 60 * neuropil[:, None, None]
    noisy = rng.poisson(clean).astype(np.float64) + rng.normal(0, 5, clean.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def main() -> int:
    import suite2p  # only this script needs it
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        data.mkdir()
        tifffile.imwrite(data / "movie.tif", synthetic_movie())
        settings = suite2p.default_settings()
        settings["torch_device"] = "cpu"
        settings["fs"] = 10.0
        settings["tau"] = 1.0
        settings["diameter"] = [8.0, 8.0]
        settings["detection"]["threshold_scaling"] = 0.6
        settings["detection"]["sparsery_settings"]["spatial_scale"] = 1
        settings["registration"]["nonrigid"] = False  # blocks do not fit a 48 x 56 frame
        settings["io"]["save_ops_orig"] = True
        settings["io"]["delete_bin"] = False
        db = suite2p.default_db()
        db["data_path"] = [str(data)]
        db["save_path0"] = str(tmp_path)
        db["nplanes"] = 1
        db["nchannels"] = 1
        suite2p.run_s2p(db=db, settings=settings)
        plane = tmp_path / "suite2p" / "plane0"
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        for name in KEEP:
            shutil.copy2(plane / name, OUT / name)
        stat = np.load(OUT / "stat.npy", allow_pickle=True)
        iscell = np.load(OUT / "iscell.npy")
        print(f"suite2p {suite2p.version}: {len(stat)} ROIs, {int(iscell[:, 0].sum())} cells")
        print(f"overlapping pixels: {sum(int(s['overlap'].sum()) for s in stat)}")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
