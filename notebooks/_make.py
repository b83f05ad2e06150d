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
    for i, (kind, src) in enumerate(cells):
        src = src.strip("\n")
        cell = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        cell["id"] = f"{Path(name).stem[:48]}-{i}"  # deterministic: re-running writes no churn
        nb.cells.append(cell)
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


notebook(
    "06_online_accumulate.ipynb",
    [
        (
            "md",
            """
# Online statistics with `cd.accumulate`

An online run (CaImAn's OnACID, a microscope stream) delivers frames and their traces block by
block. `cd.accumulate` keeps running statistics of any movie and returns the current images
after every block; once every frame has arrived, the images are **bit for bit** those of
`cd.project` on the whole movie, whatever the block sizes. Here a synthetic result plays the
stream: the model knows only its first 100 frames, and the rest arrives in uneven blocks.
""",
        ),
        (
            "code",
            """
import numpy as np
import matplotlib
matplotlib.use("Agg")  # inline in Jupyter; headless in CI
import matplotlib.pyplot as plt
from IPython.display import display
import caiman_dask as cd

full = cd.synthetic(dims=(64, 80), T=600, K=20, seed=7)
Y, C, f = (np.asarray(x.compute()) for x in (full.Y, full.C, full.f))
# what an online run knows at the start: footprints, background, the first 100 frames
early = cd.from_arrays(full.A, C[:, :100], dims=full.dims, b=full.b.compute(), f=f[:, :100], Y=Y[:100])
acc = cd.accumulate(cd.residuals(early), ["mean", "std", "max", "corr"])
images = acc.send(100)
""",
        ),
        (
            "code",
            """
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
shown = [ax.imshow(images[k], cmap="gray") for ax, k in zip(axes, ("std", "max", "corr"))]
for ax, k in zip(axes, ("std", "max", "corr")):
    ax.set_title(k); ax.axis("off")
handle = display(fig, display_id=True)
rng = np.random.default_rng(0)
t = 100
while t < full.T:  # frames and traces arrive in uneven blocks
    n = min(int(rng.integers(1, 80)), full.T - t)
    images = acc.send({"Y": Y[t:t + n], "C": C[:, t:t + n], "f": f[:, t:t + n]})
    t += n
    for im, k in zip(shown, ("std", "max", "corr")):
        im.set_data(images[k]); im.autoscale()
    fig.suptitle(f"residual images after {acc.n} frames")
    handle.update(fig)
plt.close(fig)
""",
        ),
        (
            "code",
            """
offline = cd.project(cd.residuals(full), ["mean", "std", "max", "corr"])
for k in offline:
    assert np.array_equal(images[k], offline[k], equal_nan=True), k
print("online images == cd.project on the whole movie, bit for bit")
""",
        ),
    ],
)

notebook(
    "05_viewers.ipynb",
    [
        (
            "md",
            """
# Viewers: napari, fastplotlib and xarray

Open a CNMF result in **napari** (layers: raw, RCM + background, residuals with exact contrast
limits, footprints as labels, projections) and in **fastplotlib** (`ImageWidget`), both
headless here (napari's `ViewerModel`, fastplotlib's offscreen canvas); in a desktop session
use `cd.to_napari(model)` (a new `napari.Viewer`) and `widget.show()`.

**First frame fast**: the movie layers open at once with *provisional* contrast limits (the
min / max of 8 evenly spaced frames); the exact min / max come from one pass over the movie in
a background thread, and the layers switch to them when it ends (`live.wait()` waits for it).
""",
        ),
        (
            "code",
            """
import os, tempfile, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display needed
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import caiman_dask as cd

workdir = tempfile.mkdtemp()
cd.synthetic(dims=(90, 120), T=600, K=30, seed=5, path=workdir)   # CaImAn-format files
model = cd.open_cnmf(f"{workdir}/synthetic.hdf5")
model
""",
        ),
        (
            "md",
            """
## napari

`cd.to_napari(model, viewer)` returns the viewer, its new layers and the live limits.
""",
        ),
        (
            "code",
            """
from napari.components import ViewerModel

t0 = time.perf_counter()
viewer, layers, live = cd.to_napari(model, ViewerModel(), components="good")
print(f"layers in {time.perf_counter() - t0:.2f} s:", [ly.name for ly in viewer.layers])
print("limits now:", live.state, layers["residuals"].contrast_limits)
live.wait()   # the background pass: exact limits, applied to the layers
print("limits after the pass:", layers["residuals"].metadata["caiman_dask"]["limits"], layers["residuals"].contrast_limits)
res = cd.residuals(model) + cd.rcm(model, "bad")   # the residuals layer: Y − A_good·C_good − B
assert tuple(layers["residuals"].contrast_limits) == (res.min, res.max)
""",
        ),
        (
            "code",
            """
viewer.dims.set_current_step(0, 250)             # napari's time slider: frame 250
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, name in zip(axes, ["raw", "rcm + rcb", "residuals"]):
    ly = layers[name]
    ax.imshow(np.asarray(ly.data[250]), cmap="gray", vmin=ly.contrast_limits[0], vmax=ly.contrast_limits[1])
    ax.contour(layers["footprints"].data > 0, levels=[0.5], colors="r", linewidths=0.5)
    ax.set_title(name); ax.set_axis_off()
""",
        ),
        (
            "md",
            """
A caiman_dask zarr store opens in napari through the reader plugin (`napari results.zarr`, or
`viewer.open("results.zarr", plugin="caiman-dask")`); the stored movies get exact limits from
the stored min / max projections at once.
""",
        ),
        (
            "code",
            """
from caiman_dask._napari import get_reader

store = cd.to_zarr(model, f"{workdir}/results.zarr", movies=("rcm", "residuals"), progress=False)
layer_data = get_reader(str(store))(str(store))
[(kw["name"], kind) for _, kw, kind in layer_data]
""",
        ),
        (
            "md",
            """
## fastplotlib

`cd.to_fastplotlib(model)` is an `ImageWidget` of raw | RCM + background | residuals, which
computes only the frame shown. Rendered offscreen here (software Vulkan in CI).
""",
        ),
        (
            "code",
            """
widget, flive = cd.to_fastplotlib(model, "good", exact_limits="wait",
                                  figure_kwargs={"canvas": "offscreen", "size": (900, 420)})
widget.show()
widget.current_index = {"t": 250}
from fastplotlib.utils import loop
loop.call_later(0.5, loop.stop); loop.run()     # let the widget fetch frame 250
shot = np.asarray(widget.figure.canvas.draw())
plt.figure(figsize=(9, 4.2)); plt.imshow(shot); plt.axis("off");
[(g.vmin, g.vmax) for g in widget.managed_graphics]
""",
        ),
        (
            "md",
            """
## xarray

`movie.to_xarray()` is a dask-backed `DataArray` (`t, y, x`; time in seconds from the frame
rate); the store opens with `xr.open_zarr` to the same dims and values. `np.asarray(movie)` on a
movie above 1 GiB (`CAIMAN_DASK_MAX_DENSE_BYTES`) raises `cd.DenseMovieError` instead of filling
memory.
""",
        ),
        (
            "code",
            """
import xarray as xr

da_res = cd.residuals(model).to_xarray()
print(da_res)
stored = xr.open_zarr(store, group="residuals", consolidated=False)["0"]
assert stored.dims == da_res.dims
np.testing.assert_array_equal(stored[250].values, da_res[250].values)
da_res.sel(t=slice(2.0, 4.0)).mean("t").plot(figsize=(5, 3.2));
""",
        ),
    ],
)
