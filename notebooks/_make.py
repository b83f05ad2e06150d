"""Writes the example notebooks (outputs cleared, as committed). Run from the repo root:

python notebooks/_make.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def notebook(name: str, cells: list[tuple[str, str]]) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for kind, src in cells:
        src = src.strip("\n")
        nb.cells.append(
            nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        )
    nbf.write(nb, HERE / name)


notebook(
    "01_quickstart.ipynb",
    [
        (
            "md",
            """
# caiman_dask quick start

Open a CNMF result lazily, slice its reconstructed movies frame by frame, and compute **exact**
projections — here on a synthetic, CaImAn-like 2p result written in CaImAn's own formats
(`cnmf.save()` HDF5 and a frame-major memmap). With your data, replace the first cell by
`cd.open_cnmf("your_cnmf.hdf5", movie="memmap_..._order_C_frames_....mmap")`.
""",
        ),
        (
            "code",
            """
import tempfile, time
import numpy as np
import matplotlib
matplotlib.use("Agg")  # inline in Jupyter; headless in CI
import matplotlib.pyplot as plt
import caiman_dask as cd

workdir = tempfile.mkdtemp()
cd.synthetic(dims=(120, 160), T=1500, K=50, seed=0, path=workdir)   # CaImAn-format files
model = cd.open_cnmf(f"{workdir}/synthetic.hdf5")                  # lazy: nothing is read yet
model
""",
        ),
        (
            "md",
            "The factors are chunked dask arrays; `Y` is the movie `(T, *dims)` read per chunk from the memmap.",
        ),
        (
            "code",
            """
model.A, model.C, model.Y
""",
        ),
        (
            "code",
            """
rcm = cd.rcm(model, "good")     # A·C over the accepted components
rcb = cd.rcb(model)             # low-rank background b·f
res = cd.residuals(model)       # Y − A·C − b·f
t0 = time.perf_counter(); frame = rcm[700]; dt = time.perf_counter() - t0
print(frame.shape, frame.dtype, f"{dt * 1e3:.2f} ms")
res[100:140, 20:60, :].shape
""",
        ),
        (
            "md",
            "`.data` is a block-wise dask graph over time chunks; building it computes nothing.",
        ),
        (
            "code",
            """
rcm.data
""",
        ),
        (
            "md",
            """
## Exact projections: good vs bad components

`cd.project` uses the outer-product structure (covariances where footprints overlap, an exact
pass over only the overlapping traces for min / max) and never builds the movie.
""",
        ),
        (
            "code",
            """
good_max = cd.project(cd.rcm(model, "good"), "max")
bad_max = cd.project(cd.rcm(model, "bad"), "max")
corr = cd.project(cd.raw(model), "corr")       # CaImAn's local_correlations image of Y
fig, ax = plt.subplots(1, 3, figsize=(12, 3.5))
for a, img, title in zip(ax, (good_max, bad_max, corr), ("max, good", "max, bad", "corr(Y)")):
    a.imshow(img, cmap="gray"); a.set_title(title); a.axis("off")
plt.show()
""",
        ),
        (
            "md",
            "Check against dense brute force on a window (the only place a dense movie is built here):",
        ),
        (
            "code",
            """
window = slice(0, 200)
dense = rcm[window].astype(np.float64)
img = cd.project(rcm, ["mean", "std", "min", "max"], frames=window)
for k, ref in (("mean", dense.mean(0)), ("std", dense.std(0)), ("min", dense.min(0)), ("max", dense.max(0))):
    err = np.abs(img[k] - ref).max() / np.abs(ref).max()
    print(f"{k:4s} max relative error {err:.1e}")
    assert err < 1e-10
print("movie range:", rcm.min, rcm.max, "| residual range:", res.min, res.max)
""",
        ),
    ],
)

notebook(
    "02_cnmfe_and_3d.ipynb",
    [
        (
            "md",
            """
# CNMF-E ring background and 3D volumes

A CNMF-E result has no `b`/`f`: its background is the ring model
`b0 + U(W·(D·Y − D·A·C − D·b0))`. caiman_dask computes it lazily, frame by frame, from `Y[t]`
and `C[:, t]` only.
""",
        ),
        (
            "code",
            """
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import caiman_dask as cd

m1p = cd.synthetic(dims=(96, 120), T=600, K=30, seed=1, ring_ssub=2, ring_radius=8, dtype=np.float32)
print(m1p, "W:", m1p.W.shape)
rcb = cd.rcb(m1p)
res = cd.residuals(m1p)
frame_b, frame_r = rcb[300], res[300]
imgs = cd.project([rcb, res], ["mean", "std"])    # one pass over Y for both
fig, ax = plt.subplots(1, 4, figsize=(14, 3))
for a, img, title in zip(ax, (frame_b, frame_r, imgs[0]["mean"], imgs[1]["std"]),
                         ("ring background, t=300", "residual, t=300", "background mean", "residual std")):
    a.imshow(img, cmap="gray"); a.set_title(title); a.axis("off")
plt.show()
""",
        ),
        ("md", "## 3D: dims `(d1, d2, d3)`, frames `(T, d1, d2, d3)`"),
        (
            "code",
            """
m3 = cd.synthetic(dims=(20, 32, 24), T=200, K=15, seed=2, footprint_px=120)
rcm3 = cd.rcm(m3)
print(rcm3.shape, rcm3[10].shape)
mx = cd.project(rcm3, "max")
corr = cd.project(cd.raw(m3), "corr")    # 6 face neighbours, as CaImAn does in 3D
fig, ax = plt.subplots(1, 2, figsize=(8, 3))
ax[0].imshow(mx.max(axis=0), cmap="gray"); ax[0].set_title("RCM max, max over d1")
ax[1].imshow(np.nanmax(corr, axis=0), cmap="gray"); ax[1].set_title("corr(Y), max over d1")
plt.show()
""",
        ),
    ],
)

notebook(
    "03_zarr_export.ipynb",
    [
        (
            "md",
            """
# Export to zarr and read it back

`cd.to_zarr` streams the movies (as OME-Zarr images), their exact projections and the factors
to a zarr store, resumably. Any zarr reader opens it: here caiman_dask itself, zarr-python and
xarray.
""",
        ),
        (
            "code",
            """
import tempfile
import numpy as np
import zarr
import xarray as xr
import caiman_dask as cd

workdir = tempfile.mkdtemp()
model = cd.synthetic(dims=(64, 80), T=400, K=20, seed=3, path=f"{workdir}/cnmf")
store = cd.to_zarr(model, f"{workdir}/results.zarr", components="good", chunk_frames=32, progress=False)
print(cd.describe_store(store))
""",
        ),
        (
            "code",
            """
back = cd.open_zarr(store)                      # the same model, factors from zarr
assert np.allclose(cd.rcm(back, "good")[123], cd.rcm(model, "good")[123])
root = zarr.open_group(str(store), mode="r")
print(root.attrs["caiman_dask"]["parameters"])
root["rcm"].attrs["ome"]
""",
        ),
        (
            "code",
            """
rcm = xr.open_zarr(store / "rcm", consolidated=False)["0"]    # dims from zarr v3 dimension_names
print(rcm.dims, rcm.shape)
np.testing.assert_allclose(rcm.isel(t=5).values, cd.rcm(model, "good")[5])
max_img = xr.open_zarr(store / "projections" / "rcm" / "max", consolidated=False)["0"]
max_img
""",
        ),
        (
            "md",
            "Running the same export again is a no-op; an interrupted export resumes where it stopped.",
        ),
        (
            "code",
            """
cd.to_zarr(model, store, components="good", chunk_frames=32, progress=False)
cd.store_info(store)["complete"]
""",
        ),
    ],
)

notebook(
    "04_distributed.ipynb",
    [
        (
            "md",
            """
# The same code on dask.distributed

Start a `LocalCluster` (or connect to a scheduler, or an HPC cluster via dask-jobqueue: see the
README); every caiman_dask operation then runs on it unchanged, while `movie[t]` keeps its local
fast path.
""",
        ),
        (
            "code",
            """
import tempfile, time
import numpy as np
from distributed import Client, LocalCluster
import caiman_dask as cd

workdir = tempfile.mkdtemp()
model = cd.synthetic(dims=(96, 96), T=800, K=30, seed=4, path=workdir)
cluster = LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GB", dashboard_address=None)
client = Client(cluster)
client
""",
        ),
        (
            "code",
            """
res = cd.residuals(model)
t0 = time.perf_counter(); imgs = cd.project(res, ["mean", "std", "min", "max"]); dt = time.perf_counter() - t0
print(f"residual projections on the cluster: {dt:.1f} s")
t0 = time.perf_counter(); res[400]; print(f"res[400] with a Client active: {(time.perf_counter() - t0) * 1e3:.2f} ms")
store = cd.to_zarr(model, f"{workdir}/out.zarr", movies=("rcm", "residuals"), progress=False)
print(cd.describe_store(store).splitlines()[0])
""",
        ),
        (
            "code",
            """
with_local = cd.project(cd.residuals(model), "std")  # a fresh movie; same numbers as on the cluster
client.close(); cluster.close()
local = cd.project(cd.residuals(model), "std")
np.testing.assert_allclose(with_local, local, rtol=1e-12)
np.testing.assert_allclose(imgs["std"], local, rtol=1e-12)
""",
        ),
    ],
)
