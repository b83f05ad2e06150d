"""Make the minian pipeline fixture: the output of a real run of minian's pipeline.

Run by hand, in a separate environment that has minian (never imported by caiman_dask or by its
tests). ``pip install minian==2.0.2`` resolves ``zarr 2.18`` (rechunker 0.5 needs ``zarr<3``)
together with the newest xarray, whose zarr backend needs zarr 3: ``save_minian`` then fails
with ``open_group() got an unexpected keyword argument 'zarr_format'`` (xarray 2026.9.0).
xarray 2025.9.1 writes with zarr 2, so pin it::

    python3 -m venv /tmp/mn
    /tmp/mn/bin/pip install minian==2.0.2
    /tmp/mn/bin/pip install xarray==2025.9.1
    /tmp/mn/bin/python tests/data/make_minian_pipeline.py

(Python 3.11.7; the install resolved dask/distributed 2026.8.0, zarr 2.18.7, numpy 2.4.6,
pandas 3.1.1, scipy 1.17.1, cvxpy 1.9.3, opencv-python-headless 5.1.0.95.) It runs in about
a minute on two cores and replaces ``tests/data/minian_pipeline/`` (231 files, 2.09 MB).
There is no README in ``tests/data``: this docstring is the fixture's description.

What it does
------------
1. A seeded synthetic one-photon movie, ``60 x 80`` pixels, 400 frames, written as two 8-bit
   ``msCam<i>.tif`` files like a Miniscope recording: 12 neurons with Gaussian footprints
   (sigma 2.2-3.0 px; two overlapping pairs, 4.5 and 5 px apart), calcium from sparse spikes
   (3 % of frames, every neuron at least once) with AR(1) decay ``g = 0.92``, a bright static
   vignette ("glow"), a smooth neuropil-like background whose amplitude drifts slowly over
   time, and Gaussian noise (sd 2.5 grey levels), rounded and clipped to ``uint8``.
2. minian's pipeline in the order of its ``pipeline.ipynb``, non-interactive (no parameter
   exploration cells, no plots, no ``CNMFViewer`` labels), with the notebook's dask setup: a
   ``LocalCluster`` (2 single-thread workers, 2 GB each, ``resources={"MEM": 1}``,
   ``distributed.worker.memory.terminate`` off), ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` and
   ``MINIAN_INTERMEDIATE`` in a temporary folder. The notebook also installs minian's
   ``TaskAnnotation`` scheduler plugin; it is left out because minian 2.0.2's plugin reads
   ``Scheduler._tasks``, which the ``distributed>=2025.1`` minian requires no longer has: every
   graph then logs an ``AttributeError`` and runs without the annotations anyway.
   Steps: ``load_videos`` → glow removal (``varr - varr.min("frame")``) → ``denoise`` →
   ``remove_background`` → ``Y_fm_chk`` / ``Y_hw_chk`` → ``max_proj`` → ``seeds_init`` →
   ``pnr_refine`` → ``ks_refine`` → ``seeds_merge`` → ``initA`` / ``initC`` → ``unit_merge``
   → ``update_background`` → ``get_noise_fft`` → first iteration (``update_spatial`` →
   ``update_background`` → ``compute_trace`` → ``update_temporal`` → ``unit_merge``) → second
   iteration (``update_spatial`` → ``update_background`` → ``compute_trace`` →
   ``update_temporal``).
   **Motion correction is skipped** (``Y = varr_ref``): the synthetic movie does not move, and
   on these small, noise-dominated background-removed frames ``estimate_motion`` found
   spurious shifts of up to 46 px that ``apply_transform`` then applied, smearing the cells
   (45 units for 12 neurons). So there is no ``motion.zarr``.
3. The notebook's final ``save_minian(..., **param_save_minian)`` of ``A``, ``C``, ``S``,
   ``c0``, ``b0``, ``b``, ``f`` with its ``meta_dict=dict(session=-1, animal=-2)`` (so every
   store carries the scalar string coordinates ``session="data"``, ``animal="tests"``),
   ``max_proj`` that the notebook saves there too, and the movie minian fits, ``Y_fm_chk``
   ``(frame, height, width)`` float32 in chunks of 100 frames, all into
   ``tests/data/minian_pipeline/``. Intermediate stores stay in the temporary folder.

Parameters (``PARAMS`` below; the notebook's value in brackets where it differs), scaled to
this small movie and its small cells: median ``ksize`` 5 [7]; tophat ``wnd`` 10 [15];
``seeds_init`` windows of 100 frames every 50 [1000 / 500] and ``max_wnd`` 5 [15];
``seeds_merge`` ``thres_dist`` 5 [10]; ``initA`` ``wnd`` 6 [10]; ``update_spatial``
``dl_wnd`` 5 [10] and ``size_thres=(10, None)`` [(25, None)]; frame chunks of 100 (minian's
``get_optimal_chk`` gives one chunk for a movie this small; spatial chunks stay its whole
frame). All thresholds and the temporal parameters are the notebook's.

Result of the committed run: 37 seeds, 28 after ``pnr_refine`` / ``ks_refine``, 14 after
``seeds_merge``, 13 units from ``initA`` to the end (no unit dropped or merged, so the unit
ids are 0..12). Matched to the ground truth by a Hungarian assignment on footprint cosine
similarity: 11 of the 12 neurons (cosine 0.975-0.999, trace correlation 0.79-0.95); the
missed one lies 4.5 px from its overlapping partner and gave no seed of its own; 2 units are
spurious, at the left and right edges of the field. The script prints this table and exits 1
if fewer than 9 of the 12 are matched with cosine >= 0.6.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "minian_pipeline"
H, W, T, K = 60, 80, 400, 12
G = 0.92  # AR(1) decay of the ground truth calcium
FRAME_CHUNK = 100

PARAMS = {
    "load_videos": {"pattern": r"msCam[0-9]+\.tif$", "dtype": np.uint8},
    "denoise": {"method": "median", "ksize": 5},
    "background_removal": {"method": "tophat", "wnd": 10},
    "seeds_init": {
        "wnd_size": 100,
        "method": "rolling",
        "stp_size": 50,
        "max_wnd": 5,
        "diff_thres": 3,
    },
    "pnr_refine": {"noise_freq": 0.06, "thres": 1},
    "ks_refine": {"sig": 0.05},
    "seeds_merge": {"thres_dist": 5, "thres_corr": 0.8, "noise_freq": 0.06},
    "initialize": {"thres_corr": 0.8, "wnd": 6, "noise_freq": 0.06},
    "init_merge": {"thres_corr": 0.8},
    "get_noise": {"noise_range": (0.06, 0.5)},
    "first_spatial": {"dl_wnd": 5, "sparse_penal": 0.01, "size_thres": (10, None)},
    "first_temporal": {
        "noise_freq": 0.06,
        "sparse_penal": 1,
        "p": 1,
        "add_lag": 20,
        "jac_thres": 0.2,
    },
    "first_merge": {"thres_corr": 0.8},
    "second_spatial": {"dl_wnd": 5, "sparse_penal": 0.01, "size_thres": (10, None)},
    "second_temporal": {
        "noise_freq": 0.06,
        "sparse_penal": 1,
        "p": 1,
        "add_lag": 20,
        "jac_thres": 0.4,
    },
}


def ground_truth() -> dict[str, np.ndarray]:
    """The seeded synthetic movie and its factors (float64, before 8-bit rounding)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(16)
    centers: list[np.ndarray] = []
    while len(centers) < K - 2:  # well separated ones first
        c = rng.uniform((8, 8), (H - 8, W - 8))
        if all(np.hypot(*(c - d)) > 11 for d in centers):
            centers.append(c)
    for j, dist in ((0, 4.5), (3, 5.0)):  # two overlapping pairs
        ang = rng.uniform(0, 2 * np.pi)
        centers.append(centers[j] + dist * np.array([np.sin(ang), np.cos(ang)]))
    cen = np.clip(np.array(centers), 5, (H - 6, W - 6))
    sig = rng.uniform(2.2, 3.0, K)
    yy, xx = np.mgrid[:H, :W]
    A = np.exp(
        -((yy[None] - cen[:, 0, None, None]) ** 2 + (xx[None] - cen[:, 1, None, None]) ** 2)
        / (2 * sig[:, None, None] ** 2)
    )
    A[A < 0.02] = 0.0
    amp = rng.uniform(25, 45, K)  # grey levels at the peak for C = 1
    S = (rng.random((K, T)) < 0.03) * rng.lognormal(0.0, 0.3, (K, T))
    S[np.arange(K), rng.integers(20, T - 20, K)] += 1.0  # every neuron fires at least once
    C = np.zeros((K, T))
    for t in range(T):
        C[:, t] = (G * C[:, t - 1] if t else 0.0) + S[:, t]
    glow = 40.0 + 60.0 * np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / (2 * 35.0**2))
    neuropil = gaussian_filter(rng.normal(size=(H, W)), 8.0)
    neuropil = 12.0 * (neuropil - neuropil.min()) / np.ptp(neuropil)
    drift = (
        1.0
        + 0.4 * np.sin(2 * np.pi * np.arange(T) / T)
        + 0.1 * np.cos(2 * np.pi * 3 * np.arange(T) / T)
    )
    clean = (
        np.einsum("khw,kt->thw", A * amp[:, None, None], C)
        + glow[None]
        + neuropil[None] * drift[:, None, None]
    )
    movie = np.clip(np.round(clean + rng.normal(0.0, 2.5, clean.shape)), 0, 255).astype(np.uint8)
    return {"A": A, "C": C, "S": S, "amp": amp, "centers": cen, "movie": movie}


def match(A_gt: np.ndarray, C_gt: np.ndarray, A: np.ndarray, C: np.ndarray) -> list[tuple]:
    """Hungarian assignment of minian's units to ground-truth neurons on footprint cosine."""
    from scipy.optimize import linear_sum_assignment

    a_gt = A_gt.reshape(len(A_gt), -1)
    a = A.reshape(len(A), -1)
    cos = (a_gt @ a.T) / np.outer(np.linalg.norm(a_gt, axis=1), np.linalg.norm(a, axis=1))
    rows, cols = linear_sum_assignment(-cos)
    out = []
    for i, j in zip(rows, cols, strict=True):
        r = np.corrcoef(C_gt[i], C[j])[0, 1]
        out.append((int(i), int(j), float(cos[i, j]), float(r)))
    return out


def main() -> int:
    import dask
    import tifffile
    import xarray as xr
    from dask.distributed import Client, LocalCluster

    inter = Path(tempfile.mkdtemp(prefix="minian_int_"))
    os.environ["MINIAN_INTERMEDIATE"] = str(inter)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[v] = "1"

    import minian
    from minian.cnmf import (
        compute_trace,
        get_noise_fft,
        unit_merge,
        update_background,
        update_spatial,
        update_temporal,
    )
    from minian.initialization import initA, initC, ks_refine, pnr_refine, seeds_init, seeds_merge
    from minian.preprocessing import denoise, remove_background
    from minian.utilities import get_optimal_chk, load_videos, save_minian

    gt = ground_truth()
    vdir = Path(tempfile.mkdtemp(prefix="minian_videos_"))  # update_temporal opens all of intpath
    for i, part in enumerate(np.array_split(gt["movie"], 2), start=1):
        tifffile.imwrite(vdir / f"msCam{i}.tif", part)
    if OUT.exists():
        shutil.rmtree(OUT)
    param_save_minian = {
        "dpath": str(OUT),
        "meta_dict": {"session": -1, "animal": -2},
        "overwrite": True,
    }
    intpath = str(inter)

    dask.config.set({"distributed.worker.memory.terminate": False})
    cluster = LocalCluster(
        n_workers=2,
        memory_limit="2GB",
        resources={"MEM": 1},
        threads_per_worker=1,
        dashboard_address=None,
    )
    client = Client(cluster)
    try:
        # ---------------------------------------------------------------- preprocessing
        varr = load_videos(str(vdir), **PARAMS["load_videos"])
        chk, _ = get_optimal_chk(varr, dtype=float)
        chk["frame"] = FRAME_CHUNK  # minian's default for this small movie is one chunk
        print("chunks:", chk)
        varr = save_minian(
            varr.chunk({"frame": chk["frame"], "height": -1, "width": -1}).rename("varr"),
            intpath,
            overwrite=True,
        )
        varr_ref = varr - varr.min("frame").compute()
        varr_ref = denoise(varr_ref, **PARAMS["denoise"])
        varr_ref = remove_background(varr_ref, **PARAMS["background_removal"])
        varr_ref = save_minian(varr_ref.rename("varr_ref"), dpath=intpath, overwrite=True)
        # motion correction skipped: the synthetic movie does not move (see the docstring)
        Y = varr_ref
        Y_fm_chk = save_minian(Y.astype(np.float32).rename("Y_fm_chk"), intpath, overwrite=True)
        Y_hw_chk = save_minian(
            Y_fm_chk.rename("Y_hw_chk"),
            intpath,
            overwrite=True,
            chunks={"frame": -1, "height": chk["height"], "width": chk["width"]},
        )
        max_proj = save_minian(
            Y_fm_chk.max("frame").rename("max_proj"), **param_save_minian
        ).compute()
        # ---------------------------------------------------------------- initialization
        seeds = seeds_init(Y_fm_chk, **PARAMS["seeds_init"])
        print("seeds_init:", len(seeds))
        seeds, _pnr, _gmm = pnr_refine(Y_hw_chk, seeds, **PARAMS["pnr_refine"])
        seeds = ks_refine(Y_hw_chk, seeds, **PARAMS["ks_refine"])
        seeds_final = seeds[seeds["mask_ks"] & seeds["mask_pnr"]].reset_index(drop=True)
        print("after pnr_refine + ks_refine:", len(seeds_final))
        seeds_final = seeds_merge(Y_hw_chk, max_proj, seeds_final, **PARAMS["seeds_merge"])
        kept = seeds_final[seeds_final["mask_mrg"]]
        print("after seeds_merge:", len(kept), kept[["height", "width"]].values.tolist())
        A_init = initA(Y_hw_chk, seeds_final[seeds_final["mask_mrg"]], **PARAMS["initialize"])
        A_init = save_minian(A_init.rename("A_init"), intpath, overwrite=True)
        C_init = initC(Y_fm_chk, A_init)
        C_init = save_minian(
            C_init.rename("C_init"), intpath, overwrite=True, chunks={"unit_id": 1, "frame": -1}
        )
        A, C = unit_merge(A_init, C_init, **PARAMS["init_merge"])
        A = save_minian(A.rename("A"), intpath, overwrite=True)
        C = save_minian(C.rename("C"), intpath, overwrite=True)
        C_chk = save_minian(
            C.rename("C_chk"),
            intpath,
            overwrite=True,
            chunks={"unit_id": -1, "frame": chk["frame"]},
        )
        print("initial units:", A.sizes["unit_id"])
        b, f = update_background(Y_fm_chk, A, C_chk)
        f = save_minian(f.rename("f"), intpath, overwrite=True)
        b = save_minian(b.rename("b"), intpath, overwrite=True)
        sn_spatial = get_noise_fft(Y_hw_chk, **PARAMS["get_noise"])
        sn_spatial = save_minian(sn_spatial.rename("sn_spatial"), intpath, overwrite=True)
        # ---------------------------------------------------------------- CNMF, two iterations
        for it in ("first", "second"):
            A_new, mask, norm_fac = update_spatial(
                Y_hw_chk, A, C, sn_spatial, **PARAMS[f"{it}_spatial"]
            )
            C_new = save_minian(
                (C.sel(unit_id=mask) * norm_fac).rename("C_new"), intpath, overwrite=True
            )
            C_chk_new = save_minian(
                (C_chk.sel(unit_id=mask) * norm_fac).rename("C_chk_new"),
                intpath,
                overwrite=True,
            )
            b_new, f_new = update_background(Y_fm_chk, A_new, C_chk_new)
            A = save_minian(
                A_new.rename("A"),
                intpath,
                overwrite=True,
                chunks={"unit_id": 1, "height": -1, "width": -1},
            )
            b = save_minian(b_new.rename("b"), intpath, overwrite=True)
            f = save_minian(
                f_new.chunk({"frame": chk["frame"]}).rename("f"), intpath, overwrite=True
            )
            C = save_minian(C_new.rename("C"), intpath, overwrite=True)
            C_chk = save_minian(C_chk_new.rename("C_chk"), intpath, overwrite=True)
            YrA = save_minian(
                compute_trace(Y_fm_chk, A, b, C_chk, f).rename("YrA"),
                intpath,
                overwrite=True,
                chunks={"unit_id": 1, "frame": -1},
            )
            C_new, S_new, b0_new, c0_new, _g, mask = update_temporal(
                A, C, YrA=YrA, **PARAMS[f"{it}_temporal"]
            )
            C = save_minian(
                C_new.rename("C").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True
            )
            C_chk = save_minian(
                C.rename("C_chk"),
                intpath,
                overwrite=True,
                chunks={"unit_id": -1, "frame": chk["frame"]},
            )
            S = save_minian(
                S_new.rename("S").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True
            )
            b0 = save_minian(
                b0_new.rename("b0").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True
            )
            c0 = save_minian(
                c0_new.rename("c0").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True
            )
            A = A.sel(unit_id=C.coords["unit_id"].values)
            print(f"{it} iteration: {A.sizes['unit_id']} units")
            if it == "first":
                A_mrg, C_mrg, [sig_mrg] = unit_merge(A, C, [C + b0 + c0], **PARAMS["first_merge"])
                A = save_minian(A_mrg.rename("A_mrg"), intpath, overwrite=True)
                C = save_minian(C_mrg.rename("C_mrg"), intpath, overwrite=True)
                C_chk = save_minian(
                    C.rename("C_mrg_chk"),
                    intpath,
                    overwrite=True,
                    chunks={"unit_id": -1, "frame": chk["frame"]},
                )
                save_minian(sig_mrg.rename("sig_mrg"), intpath, overwrite=True)
                print(f"after unit_merge: {A.sizes['unit_id']} units")
        # ---------------------------------------------------------------- save
        for arr, name in ((A, "A"), (C, "C"), (S, "S"), (c0, "c0"), (b0, "b0"), (b, "b"), (f, "f")):
            save_minian(arr.rename(name), **param_save_minian)
        save_minian(Y_fm_chk.rename("Y_fm_chk"), **param_save_minian)
        res = {n: xr.open_zarr(OUT / f"{n}.zarr")[n].values for n in ("A", "C")}
        uid = xr.open_zarr(OUT / "C.zarr")["unit_id"].values
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(inter, ignore_errors=True)
        shutil.rmtree(vdir, ignore_errors=True)

    pairs = match(gt["A"], gt["C"], res["A"], res["C"])
    found = [p for p in pairs if p[2] >= 0.6]
    print(f"minian {minian.__version__}: {len(uid)} units (unit_id {uid.tolist()})")
    print(" gt  unit_id  footprint_cos  trace_corr")
    for i, j, cos, r in sorted(pairs):
        print(f"{i:3d}  {int(uid[j]):7d}  {cos:13.3f}  {r:10.3f}")
    print(f"matched {len(found)} of {K} ground-truth neurons (footprint cosine >= 0.6)")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total:,} bytes)")
    return 0 if len(found) >= 9 else 1


if __name__ == "__main__":
    sys.exit(main())
