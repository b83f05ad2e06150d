"""napari: layers with exact contrast limits, footprint labels, the npe2 reader, in real napari.

References are dense float64 movies rebuilt from CaImAn's own file with h5py and NumPy (not
through caiman_dask), and CaImAn-computed projections (``refs_2p.npz``).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # headless: no display in tests or CI

import threading
from pathlib import Path

import h5py
import npe2
import numpy as np
import pytest
import scipy.sparse
from dask.callbacks import Callback
from napari.components import ViewerModel

import caiman_dask as cd
from caiman_dask import _napari as N
from caiman_dask._statistics import cached_min_max
from caiman_dask._view import PROVISIONAL_FRAMES, LiveLimits

from .conftest import MMAP_2P_C

# ---------------------------------------------------------------------------------------------
# dense references, without caiman_dask
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_2p(caiman_dir: Path) -> dict[str, np.ndarray]:
    with h5py.File(caiman_dir / "cnmf_2p.hdf5", "r") as f:
        e = f["estimates"]
        shape = tuple(int(s) for s in e["A"]["shape"][()])
        A = scipy.sparse.csc_matrix(
            (e["A"]["data"][()], e["A"]["indices"][()], e["A"]["indptr"][()]), shape=shape
        ).toarray()
        C, b, fb = e["C"][()], e["b"][()], e["f"][()]
        d1, d2 = (int(x) for x in e["dims"][()])
    P, T = A.shape[0], C.shape[1]
    Yr = np.fromfile(caiman_dir / MMAP_2P_C, dtype=np.float32).reshape(P, T).astype(np.float64)

    def movie(x: np.ndarray) -> np.ndarray:  # (P, T), Fortran pixel order -> (T, d1, d2)
        return x.T.reshape(T, d2, d1).transpose(0, 2, 1)

    ac, bf = A @ C, b @ fb
    return {
        "A": A,
        "dims": np.array([d1, d2]),
        "raw": movie(Yr),
        "rcm + rcb": movie(ac + bf),
        "residuals": movie(Yr - ac - bf),
        "rcm": movie(ac),
    }


def _extremes(x: np.ndarray) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def _sampled(x: np.ndarray, n: int = PROVISIONAL_FRAMES) -> tuple[float, float]:
    t = np.unique(np.linspace(0, x.shape[0] - 1, n).round().astype(int))
    return _extremes(x[t])


# ---------------------------------------------------------------------------------------------
# footprints as labels
# ---------------------------------------------------------------------------------------------


def test_footprint_labels_match_a_dense_reference(model_2p, dense_2p):
    A = dense_2p["A"]
    d1, d2 = (int(v) for v in dense_2p["dims"])
    thr = 0.2
    rel = A / A.max(axis=0, keepdims=True)
    inside = A > thr * A.max(axis=0, keepdims=True)
    score = np.where(inside, rel, -1.0)
    want = np.where(inside.any(axis=1), score.argmax(axis=1) + 1, 0)
    want = want.reshape(d2, d1).T  # Fortran pixel order
    got = N.footprint_labels(model_2p, threshold=thr)
    assert got.dtype == np.int32 and got.shape == (d1, d2)
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) - {0} == set(range(1, A.shape[1] + 1)) & set(np.unique(want))
    # a selection keeps only its components
    good = model_2p.components("good")
    sel = N.footprint_labels(model_2p, "good", threshold=thr)
    assert set(np.unique(sel)) - {0} <= set(good + 1)
    # its boundaries are the contours the viewer draws (same footprint definition)
    lab = N.footprint_labels(model_2p, [3], threshold=thr) > 0
    edge = lab & ~(
        np.pad(lab, 1)[:-2, 1:-1]
        & np.pad(lab, 1)[2:, 1:-1]
        & np.pad(lab, 1)[1:-1, :-2]
        & np.pad(lab, 1)[1:-1, 2:]
    )
    np.testing.assert_array_equal(edge, cd.footprint_contours(model_2p, [3], threshold=thr))


# ---------------------------------------------------------------------------------------------
# to_napari with napari's ViewerModel (no Qt)
# ---------------------------------------------------------------------------------------------


def test_to_napari_exact_limits_on_caimans_2p_fixture(model_2p, dense_2p, refs_2p):
    cd.forget_statistics()
    viewer, layers, live = N.to_napari(model_2p, ViewerModel(), exact_limits="request")
    assert [ly.name for ly in viewer.layers] == [
        "raw",
        "rcm + rcb",
        "residuals",
        "footprints",
        "rcm mean",
        "rcm max",
    ]
    # provisional: the extremes of 8 evenly spaced frames, labelled as such
    for name in ("raw", "rcm + rcb", "residuals"):
        ly = layers[name]
        assert ly.metadata["caiman_dask"]["limits"] == "provisional"
        np.testing.assert_allclose(ly.contrast_limits, _sampled(dense_2p[name]), rtol=1e-6)
    assert live.state == "provisional"
    live.wait(timeout=120)
    for name in ("raw", "rcm + rcb", "residuals"):
        ly = layers[name]
        assert ly.metadata["caiman_dask"]["limits"] == "exact"
        np.testing.assert_allclose(ly.contrast_limits, _extremes(dense_2p[name]), rtol=1e-6)
        assert tuple(ly.contrast_limits_range) == tuple(ly.contrast_limits)
    # CaImAn's own projections agree (residuals: the issue's [-48.4, 85.8])
    res = layers["residuals"].contrast_limits
    assert res[0] == pytest.approx(refs_2p["residual_proj_min"].min(), rel=1e-6)
    assert res[1] == pytest.approx(refs_2p["residual_proj_max"].max(), rel=1e-6)
    np.testing.assert_allclose(
        layers["rcm max"].data, refs_2p["rcm_proj_max"], rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        layers["rcm mean"].data, refs_2p["rcm_proj_mean"], rtol=1e-9, atol=1e-9
    )
    # frames shown are the movie's frames
    viewer.dims.set_current_step(0, 123)
    for name in ("raw", "rcm + rcb", "residuals"):
        np.testing.assert_allclose(
            np.asarray(layers[name].data[123]), dense_2p[name][123], rtol=1e-5, atol=1e-3
        )
    np.testing.assert_array_equal(layers["footprints"].data, N.footprint_labels(model_2p))
    assert layers["raw"].scale[0] == pytest.approx(1 / 30)


def test_background_pass_updates_layers_and_never_blocks_the_first_frame(model_2p, dense_2p):
    cd.forget_statistics()
    release = threading.Event()
    started = threading.Event()

    def hold(key, dsk, state):  # the background pass waits until the layers exist
        if threading.current_thread().name == "caiman_dask-exact-limits":
            started.set()
            assert release.wait(60)

    with Callback(pretask=hold):
        _viewer, layers, live = N.to_napari(
            model_2p, ViewerModel(), layers=("raw", "residuals"), exact_limits="background"
        )
        assert started.wait(60)  # the pass runs, and the layers are already there
        assert live.state == "provisional"
        assert layers["residuals"].metadata["caiman_dask"]["limits"] == "provisional"
        release.set()
        live.wait(timeout=120)
    np.testing.assert_allclose(
        layers["residuals"].contrast_limits, _extremes(dense_2p["residuals"]), rtol=1e-6
    )
    assert layers["residuals"].metadata["caiman_dask"]["limits"] == "exact"


def test_cancel_stops_the_pass_between_tasks():
    cd.forget_statistics()
    m = cd.synthetic(dims=(24, 30), T=200, K=5, seed=1)
    res = cd.residuals(m, frame_chunk=10)
    live = LiveLimits([res], exact="request")
    seen: list[object] = []

    def cancel_at_first_task(key, dsk, state):
        if threading.current_thread().name == "caiman_dask-exact-limits":
            seen.append(key)
            live._cancel.set()

    with Callback(pretask=cancel_at_first_task):
        live.start()
        live._thread.join(60)
    assert live.state == "cancelled"
    assert 1 <= len(seen) <= 2  # stopped at once, not after the pass
    assert cached_min_max(res) is None  # nothing was cached
    assert live.current == live.provisional
    with pytest.raises(Exception, match="cancelled"):
        live.wait()


def test_layer_data_options_and_errors(model_2p):
    data, live = N.layer_data(model_2p, layers=("rcm + rcb", "footprints"), exact_limits="wait")
    assert [kw["name"] for _, kw, _ in data] == ["rcm + rcb", "footprints"]
    assert live.state == "exact"
    with pytest.raises(cd.OptionError, match="layers"):
        N.layer_data(model_2p, layers=("denoised",))
    with pytest.raises(cd.OptionError, match="exact_limits"):
        N.layer_data(model_2p, exact_limits="later")
    with pytest.raises(cd.OptionError, match="CNMFModel"):
        N.to_napari(np.zeros((3, 4, 5)), ViewerModel())


# ---------------------------------------------------------------------------------------------
# the npe2 reader
# ---------------------------------------------------------------------------------------------


def test_reader_opens_our_store_with_exact_limits(tmp_path, model_2p, dense_2p):
    store = tmp_path / "r.zarr"
    cd.to_zarr(model_2p, store, progress=False)
    reader = N.get_reader(str(store))
    assert reader is not None
    data = reader(str(store))
    names = [kw["name"] for _, kw, _ in data]
    assert {"rcm", "rcb", "residuals", "footprints", "residuals max"} <= set(names)
    by = {kw["name"]: (d, kw, kind) for d, kw, kind in data}
    d, kw, kind = by["residuals"]
    assert kind == "image" and kw["metadata"]["caiman_dask"]["limits"] == "exact"
    np.testing.assert_allclose(kw["contrast_limits"], _extremes(dense_2p["residuals"]), rtol=1e-6)
    np.testing.assert_allclose(
        by["rcm"][1]["contrast_limits"], _extremes(dense_2p["rcm"]), rtol=1e-6
    )
    np.testing.assert_array_equal(by["footprints"][0], N.footprint_labels(model_2p))
    # napari builds the layers
    v = ViewerModel()
    for d, kw, kind in data:
        getattr(v, f"add_{kind}")(d, **kw)
    np.testing.assert_allclose(
        np.asarray(v.layers["residuals"].data[7]), dense_2p["residuals"][7], rtol=1e-5, atol=1e-3
    )
    # and through napari's own plugin machinery (the npe2 entry point)
    npe2.PluginManager.instance().discover()
    v2 = ViewerModel()
    opened = v2.open(str(store), plugin="caiman-dask")
    assert {"rcm", "residuals", "footprints"} <= {ly.name for ly in opened}
    np.testing.assert_allclose(
        v2.layers["residuals"].contrast_limits, _extremes(dense_2p["residuals"]), rtol=1e-6
    )
    # not ours
    (tmp_path / "other").mkdir()
    assert N.get_reader(str(tmp_path / "other")) is None
    assert N.get_reader(str(tmp_path / "x.txt")) is None
    assert N.get_reader([str(store)]) is None


def test_reader_opens_a_cnmf_file(caiman_dir, dense_2p):
    data = N.read(caiman_dir / "cnmf_2p.hdf5")
    by = {kw["name"]: (d, kw, kind) for d, kw, kind in data}
    # CaImAn recorded an mmap path that does not exist here: no Y, so rcm + rcb only
    assert "rcm + rcb" in by and "footprints" in by
    mv = by["rcm + rcb"][0]
    np.testing.assert_allclose(mv[5], dense_2p["rcm + rcb"][5], rtol=1e-9, atol=1e-9)


def test_npe2_manifest_is_valid_and_registered():
    here = Path(cd.__file__).parent / "napari.yaml"
    mf = npe2.PluginManifest.from_file(here)
    assert mf.name == "caiman-dask"
    (reader,) = mf.contributions.readers
    assert reader.accepts_directories and "*.zarr" in reader.filename_patterns
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "caiman-dask" in pm._manifests, "entry point napari.manifest not installed"
    rdrs = [r for r in pm.iter_compatible_readers(["x.zarr"]) if r.plugin_name == "caiman-dask"]
    assert rdrs


def test_3d_model_layers_labels_and_plane_order(rng):
    dims, T, K = (9, 11, 4), 15, 3
    P = int(np.prod(dims))
    A = rng.random((P, K)) * (rng.random((P, K)) < 0.4)
    C = rng.random((K, T))
    b, f = rng.random((P, 1)), rng.random((1, T))
    Y = (A @ C + b @ f).T.reshape((T, *dims[::-1])).transpose(0, 3, 2, 1)
    m = cd.from_arrays(A, C, dims=dims, b=b, f=f, Y=np.ascontiguousarray(Y))
    viewer, layers, live = N.to_napari(m, ViewerModel(), exact_limits="wait")
    assert live.state == "exact"
    assert layers["raw"].data.shape == (T, *dims) and viewer.dims.displayed == (1, 2)
    np.testing.assert_allclose(layers["raw"].contrast_limits, (Y.min(), Y.max()), rtol=1e-12)
    inside = A > 0.2 * A.max(axis=0, keepdims=True)
    rel = np.where(inside, A / A.max(axis=0, keepdims=True), -1.0)
    want = np.where(inside.any(axis=1), rel.argmax(axis=1) + 1, 0)
    want = want.reshape(dims[::-1]).transpose(2, 1, 0)  # Fortran pixel order
    np.testing.assert_array_equal(layers["footprints"].data, want)
