"""cd.to_nwb / cd.open_nwb: round trips, pynwb read-back, nwbinspector, and the NWB files
neuroconv / roiextractors write for CaImAn and suite2p (tests/data/make_nwb_neuroconv.py)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import nwbinspector
import pynwb
import pytest

import caiman_dask as cd
from caiman_dask._model import _sparse_compute
from caiman_dask.testing import raise_if_dask_computes

DATA = Path(__file__).resolve().parent / "data"
SUBJECT = {"subject_id": "m1", "species": "Mus musculus", "sex": "U", "age": "P90D"}


@pytest.fixture(scope="module")
def m2p(caiman_dir: Path) -> cd.CNMFModel:
    return cd.open_cnmf(
        caiman_dir / "cnmf_2p.hdf5",
        movie=caiman_dir / "memmap_d1_60_d2_80_d3_1_order_C_frames_400.mmap",
    )


@pytest.fixture(scope="module")
def m1p(caiman_dir: Path) -> cd.CNMFModel:
    return cd.open_cnmf(
        caiman_dir / "cnmf_1p.hdf5",
        movie=caiman_dir / "memmap_d1_48_d2_64_d3_1_order_C_frames_400.mmap",
    )


@pytest.fixture(scope="module")
def nwb2p(m2p: cd.CNMFModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nwb") / "cnmf_2p.nwb"
    cd.to_nwb(m2p, path, movie="write", subject=SUBJECT, identifier="test-2p")
    return path


def test_round_trip_2p_identical_frames(m2p: cd.CNMFModel, nwb2p: Path) -> None:
    back = cd.open_nwb(nwb2p)
    assert back.dims == m2p.dims and back.K == m2p.K and back.T == m2p.T
    for t in (0, 123, 399):
        np.testing.assert_array_equal(cd.rcm(back)[t], cd.rcm(m2p)[t])
        np.testing.assert_array_equal(cd.rcm(back, "good")[t], cd.rcm(m2p, "good")[t])
        np.testing.assert_array_equal(cd.rcb(back)[t], cd.rcb(m2p)[t])
        np.testing.assert_array_equal(cd.residuals(back)[t], cd.residuals(m2p)[t])
    np.testing.assert_array_equal(back.idx_components, m2p.idx_components)
    np.testing.assert_array_equal(back.idx_components_bad, m2p.idx_components_bad)
    for name in ("YrA", "S", "F_dff"):
        np.testing.assert_array_equal(getattr(back, name).compute(), getattr(m2p, name).compute())
    for name in ("SNR_comp", "r_values"):
        np.testing.assert_array_equal(back.extras[name], np.asarray(m2p.extras[name]).ravel())
    assert back.fr == m2p.fr


def test_opening_computes_nothing(nwb2p: Path) -> None:
    with raise_if_dask_computes():
        m = cd.open_nwb(nwb2p)
        cd.residuals(m).data  # noqa: B018 (the graph only)


def test_round_trip_1p_ring_model_linked_movie(m1p: cd.CNMFModel, tmp_path: Path) -> None:
    path = cd.to_nwb(m1p, tmp_path / "cnmf_1p.nwb", movie="link", images=False)
    back = cd.open_nwb(path)
    assert back.background == "ring"
    # the same file (the link may be written resolved: compare resolved paths)
    assert Path(back.files["movie"]).resolve() == Path(m1p.files["movie"]).resolve()
    np.testing.assert_array_equal(
        _sparse_compute(back.W).toarray(), _sparse_compute(m1p.W).toarray()
    )
    np.testing.assert_array_equal(back.b0.compute(), m1p.b0.compute())
    for t in (0, 250):
        np.testing.assert_array_equal(cd.rcm(back)[t], cd.rcm(m1p)[t])
        np.testing.assert_array_equal(cd.rcb(back)[t], cd.rcb(m1p)[t])
        np.testing.assert_array_equal(cd.residuals(back)[t], cd.residuals(m1p)[t])


def test_round_trip_suite2p(tmp_path: Path) -> None:
    s2p = cd.open_suite2p(DATA / "suite2p" / "plane0")
    back = cd.open_nwb(cd.to_nwb(s2p, tmp_path / "s2p.nwb", movie="write"))
    np.testing.assert_array_equal(cd.rcm(back)[5], cd.rcm(s2p)[5])
    np.testing.assert_array_equal(cd.residuals(back)[5], cd.residuals(s2p)[5])
    np.testing.assert_array_equal(back.extras["iscell_prob"], s2p.extras["iscell_prob"])
    kept = [k for k in ("meanImg", "meanImgE", "max_proj", "Vcorr") if k in s2p.extras]
    full = [k for k in kept if s2p.extras[k].shape == s2p.dims]  # max_proj, Vcorr are cropped
    assert "meanImg" in full and "meanImgE" in full
    for name in full:  # suite2p's frame-shaped images, kept through NWB
        np.testing.assert_array_equal(back.extras[name], s2p.extras[name])
    np.testing.assert_array_equal(back.extras["mean"], cd.project(cd.raw(s2p), "mean"))


def test_round_trip_3d_voxel_mask(tmp_path: Path, rng: np.random.Generator) -> None:
    dims, K, T = (6, 7, 3), 4, 20
    A = np.where(rng.random((np.prod(dims), K)) < 0.2, rng.random((np.prod(dims), K)), 0.0)
    C = rng.random((K, T))
    Y = rng.random((T, *dims))
    m = cd.from_arrays(A, C, dims=dims, Y=Y, fr=5.0)
    path = cd.to_nwb(m, tmp_path / "vol.nwb", movie="write")
    with h5py.File(path) as f:
        assert "voxel_mask" in f["processing/ophys/ImageSegmentation/PlaneSegmentation"]
    back = cd.open_nwb(path)
    assert back.dims == dims
    for t in (0, 19):
        np.testing.assert_array_equal(cd.rcm(back)[t], cd.rcm(m)[t])
        ref = np.einsum("pk,k->p", A, C[:, t]).reshape(dims, order="F")
        np.testing.assert_allclose(cd.rcm(back)[t], ref, rtol=1e-12)
        np.testing.assert_array_equal(cd.raw(back)[t], Y[t])


def test_pynwb_reads_back_the_numbers(m2p: cd.CNMFModel, nwb2p: Path) -> None:
    C = m2p.C.compute()
    A = _sparse_compute(m2p.A).toarray()
    with pynwb.NWBHDF5IO(str(nwb2p), "r") as io:
        nwb = io.read()
        ophys = nwb.processing["ophys"]
        ps = ophys["ImageSegmentation"]["PlaneSegmentation"]
        fl = ophys["Fluorescence"]
        np.testing.assert_array_equal(fl["Denoised"].data[:], C.T)
        np.testing.assert_array_equal(
            fl["RoiResponseSeries"].data[:], (m2p.C + m2p.YrA).compute().T
        )
        np.testing.assert_array_equal(ophys["DfOverF"]["DfOverF"].data[:], m2p.F_dff.compute().T)
        np.testing.assert_array_equal(ps["accepted"].data[:][m2p.idx_components], True)
        np.testing.assert_array_equal(ps["accepted"].data[:][m2p.idx_components_bad], False)
        # rebuild frame t from the pixel masks as pynwb returns them: (x, y, weight), x = row
        t = 77
        frame32 = np.zeros(m2p.dims)
        frame64 = np.zeros(m2p.dims)
        for k in range(m2p.K):
            pm = ps["pixel_mask"][k]
            w64 = ps["weight_float64"][k]
            x, y = pm["x"].astype(int), pm["y"].astype(int)
            np.add.at(frame32, (x, y), pm["weight"].astype(np.float64) * C[k, t])
            np.add.at(frame64, (x, y), w64 * C[k, t])
            col = A[:, k].reshape(m2p.dims, order="F")
            np.testing.assert_array_equal(col[x, y], w64)  # exact footprint values
        ref = cd.rcm(m2p)[t]
        np.testing.assert_allclose(frame64, ref, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(frame32, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        # the movie, frames (T, x, y)
        np.testing.assert_array_equal(
            nwb.acquisition["TwoPhotonSeries"].data[10:13], cd.raw(m2p)[10:13]
        )
        # background ROIs: b as image masks, f as their traces
        bps = ophys["ImageSegmentation"]["BackgroundPlaneSegmentation"]
        b = m2p.b.compute()
        for i in range(m2p.nb):
            np.testing.assert_allclose(
                bps["image_mask"][i], b[:, i].reshape(m2p.dims, order="F"), rtol=1e-6
            )
        np.testing.assert_array_equal(fl["Background"].data[:], m2p.f.compute().T)
        imgs = ophys["SummaryImages"]
        got = {k: imgs[k].data[:] for k in imgs.images}
    exact = cd.project(cd.raw(m2p), ["mean", "max", "std", "corr"])
    for kind, img in exact.items():
        np.testing.assert_array_equal(got[kind], img)
    np.testing.assert_array_equal(got["rcm_max"], cd.project(cd.rcm(m2p), "max"))
    np.testing.assert_array_equal(got["residuals_max"], cd.project(cd.residuals(m2p), "max"))


def test_nwbinspector_no_critical(nwb2p: Path, m1p: cd.CNMFModel, tmp_path: Path) -> None:
    p1 = cd.to_nwb(m1p, tmp_path / "one.nwb", movie="link", subject=SUBJECT)
    for path in (nwb2p, p1):
        messages = list(nwbinspector.inspect_nwbfile(nwbfile_path=str(path)))
        critical = [m for m in messages if m.importance == nwbinspector.Importance.CRITICAL]
        assert not critical, [m.message for m in critical]


def test_neuroconv_caiman_file(m2p: cd.CNMFModel) -> None:
    """roiextractors / neuroconv's NWB of the same CaImAn result: footprints to float32, the
    denoised traces exactly, is_accepted as the component sets."""
    back = cd.open_nwb(DATA / "nwb" / "caiman_2p_neuroconv.nwb")
    assert back.dims == m2p.dims and back.background == "none" and back.Y is None
    A = _sparse_compute(m2p.A).toarray()
    np.testing.assert_allclose(_sparse_compute(back.A).toarray(), A, rtol=1e-6, atol=1e-7 * A.max())
    np.testing.assert_array_equal(back.C.compute(), m2p.C.compute())
    np.testing.assert_array_equal(back.S.compute(), m2p.S.compute())
    np.testing.assert_array_equal(back.YrA.compute(), (m2p.C + m2p.YrA).compute() - m2p.C.compute())
    np.testing.assert_array_equal(back.idx_components, m2p.idx_components)
    np.testing.assert_allclose(back.extras["r_values"], np.ravel(m2p.extras["r_values"]))


@pytest.mark.parametrize("name", ["suite2p_neuroconv.nwb", "suite2p_export.nwb"])
def test_suite2p_nwb_files(name: str) -> None:
    """neuroconv and suite2p's own export (tests/data/make_nwb_suite2p.py) both write
    suite2p's raw lam on every ROI pixel, F, Fneu and spks as the traces."""
    back = cd.open_nwb(DATA / "nwb" / name)
    assert back.dims == (48, 56)
    stat = np.load(DATA / "suite2p" / "plane0" / "stat.npy", allow_pickle=True)
    A = _sparse_compute(back.A).toarray()
    for k, s in enumerate(stat):
        col = A[:, k].reshape((48, 56), order="F")
        np.testing.assert_allclose(col[s["ypix"], s["xpix"]], s["lam"], rtol=1e-7)
        assert np.count_nonzero(col) == len(s["ypix"])
    np.testing.assert_array_equal(back.C.compute(), np.load(DATA / "suite2p" / "plane0" / "F.npy"))
    np.testing.assert_array_equal(
        back.extras["Fneu"].compute(), np.load(DATA / "suite2p" / "plane0" / "Fneu.npy")
    )
    np.testing.assert_array_equal(
        back.S.compute(), np.load(DATA / "suite2p" / "plane0" / "spks.npy")
    )
    iscell = np.load(DATA / "suite2p" / "plane0" / "iscell.npy")
    np.testing.assert_array_equal(back.components("good"), np.flatnonzero(iscell[:, 0]))
    assert back.fr == 10.0
    ops = np.load(DATA / "suite2p" / "plane0" / "ops.npy", allow_pickle=True).item()
    key = "MeanImage" if "neuroconv" in name else "meanImg"  # (neuroconv: stored transposed)
    np.testing.assert_allclose(back.extras[key], ops["meanImg"], rtol=1e-6)


def test_image_mask_file(tmp_path: Path, rng: np.random.Generator) -> None:
    """A segmentation stored as image masks (roiextractors' other layout), written by pynwb."""
    dims, K, T = (9, 11), 3, 25
    masks = np.where(rng.random((K, *dims)) < 0.3, rng.random((K, *dims)), 0.0)
    C = rng.random((T, K))
    nwb = pynwb.NWBFile(
        session_description="s",
        identifier="id",
        session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    plane = nwb.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=pynwb.ophys.OpticalChannel(
            name="ch", description="d", emission_lambda=500.0
        ),
        imaging_rate=7.5,
        description="d",
        device=nwb.create_device(name="dev"),
        excitation_lambda=900.0,
        indicator="GCaMP",
        location="V1",
    )
    mod = nwb.create_processing_module("ophys", "d")
    seg = pynwb.ophys.ImageSegmentation()
    mod.add(seg)
    ps = seg.create_plane_segmentation(
        description="d", imaging_plane=plane, name="PlaneSegmentation"
    )
    for k in range(K):
        ps.add_roi(image_mask=masks[k])
    ps.add_column(name="iscell", description="labels", data=[1.0, 0.0, 1.0])
    region = ps.create_roi_table_region(description="all", region=list(range(K)))
    fl = pynwb.ophys.Fluorescence()
    mod.add(fl)
    fl.create_roi_response_series(
        name="RoiResponseSeries", data=C, rois=region, unit="a.u.", rate=7.5
    )
    path = tmp_path / "im.nwb"
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    back = cd.open_nwb(path)
    assert back.dims == dims and back.fr == 7.5
    ref = np.stack([m.ravel(order="F") for m in masks], axis=1)
    np.testing.assert_array_equal(_sparse_compute(back.A).toarray(), ref)
    np.testing.assert_array_equal(back.C.compute(), C.T)
    np.testing.assert_array_equal(back.components("good"), [0, 2])
    np.testing.assert_allclose(
        cd.rcm(back)[4], np.einsum("kij,k->ij", masks, C[4]), rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------ bad input


def test_open_missing_file(tmp_path: Path) -> None:
    with pytest.raises(cd.MissingFileError, match="does not exist"):
        cd.open_nwb(tmp_path / "none.nwb")


def test_open_not_hdf5(tmp_path: Path) -> None:
    p = tmp_path / "x.nwb"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(cd.FileFormatError, match="cannot open"):
        cd.open_nwb(p)


def test_open_without_segmentation(tmp_path: Path) -> None:
    p = tmp_path / "x.nwb"
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(cd.FileFormatError, match="no PlaneSegmentation"):
        cd.open_nwb(p)


def test_open_without_traces(nwb2p: Path, tmp_path: Path) -> None:
    p = tmp_path / "copy.nwb"
    shutil.copy(nwb2p, p)
    with h5py.File(p, "r+") as f:
        del f["processing/ophys/Fluorescence"]
        del f["processing/ophys/DfOverF"]
    with pytest.raises(cd.FileFormatError, match="no RoiResponseSeries"):
        cd.open_nwb(p)


def test_open_traces_disagree(nwb2p: Path, tmp_path: Path) -> None:
    p = tmp_path / "copy.nwb"
    shutil.copy(nwb2p, p)
    with h5py.File(p, "r+") as f:
        g = f["processing/ophys/Fluorescence/Denoised"]
        data = g["data"][:, :5]
        del g["data"]
        g["data"] = data
    with pytest.raises(cd.FileFormatError, match=r"has 5 ROIs .* has 31"):
        cd.open_nwb(p)


def test_open_without_dims(m2p: cd.CNMFModel, tmp_path: Path) -> None:
    p = cd.to_nwb(m2p, tmp_path / "nodims.nwb", images=False)
    with pytest.raises(cd.FileFormatError, match="pass dims="):
        cd.open_nwb(p)
    back = cd.open_nwb(p, dims=m2p.dims)
    np.testing.assert_array_equal(cd.rcm(back)[3], cd.rcm(m2p)[3])


def test_to_nwb_refuses_existing_path(nwb2p: Path, m2p: cd.CNMFModel) -> None:
    with pytest.raises(cd.MovieExistsError, match="overwrite=True"):
        cd.to_nwb(m2p, nwb2p)


def test_to_nwb_options(m2p: cd.CNMFModel, tmp_path: Path) -> None:
    with pytest.raises(cd.OptionError, match=r"movie='copy' is not one of \['write', 'link'\]"):
        cd.to_nwb(m2p, tmp_path / "a.nwb", movie="copy")  # type: ignore[arg-type]
    no_fr = cd.from_arrays(np.eye(4, 2), np.ones((2, 3)), dims=(2, 2))
    with pytest.raises(cd.OptionError, match="pass fr="):
        cd.to_nwb(no_fr, tmp_path / "b.nwb")
    with pytest.raises(cd.OptionError, match="has no movie Y"):
        cd.to_nwb(no_fr, tmp_path / "c.nwb", fr=10.0, movie="write")
    assert not list(tmp_path.iterdir())


def test_interrupted_export_leaves_no_file(tmp_path: Path) -> None:
    def stop(block: np.ndarray) -> np.ndarray:
        raise KeyboardInterrupt

    C = da.ones((2, 30), chunks=(2, 10)).map_blocks(stop, meta=np.empty((0, 0)))
    m = cd.from_arrays(np.eye(4, 2), C, dims=(2, 2), fr=10.0)
    with pytest.raises(KeyboardInterrupt):
        cd.to_nwb(m, tmp_path / "stop.nwb", images=False)
    assert not list(tmp_path.iterdir())
