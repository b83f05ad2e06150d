"""cd.open_suite2p on real suite2p 1.1 output (tests/data/make_suite2p.py), against references
rebuilt by hand from stat.npy / F.npy / data.bin with NumPy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import caiman_dask as cd
from caiman_dask._model import _sparse_compute
from caiman_dask.testing import raise_if_dask_computes

S2P = Path(__file__).resolve().parent / "data" / "suite2p" / "plane0"


def _stat() -> list[dict]:
    return list(np.load(S2P / "stat.npy", allow_pickle=True))


def _movie() -> np.ndarray:
    ops = np.load(S2P / "ops.npy", allow_pickle=True).item()
    T, Ly, Lx = ops["nframes"], ops["Ly"], ops["Lx"]
    return np.fromfile(S2P / "data.bin", np.int16).reshape(T, Ly, Lx).astype(np.float64)


def _masks_by_hand(allow_overlap: bool = False) -> np.ndarray:
    """Dense (K, Ly, Lx) masks: lam on the kept pixels, normalised to sum 1."""
    ops = np.load(S2P / "ops.npy", allow_pickle=True).item()
    stat = _stat()
    out = np.zeros((len(stat), ops["Ly"], ops["Lx"]))
    for k, s in enumerate(stat):
        keep = np.ones(len(s["ypix"]), bool) if allow_overlap else ~s["overlap"]
        lam = s["lam"][keep].astype(np.float64)
        out[k, s["ypix"][keep], s["xpix"][keep]] = lam / lam.sum()
    return out


@pytest.fixture(scope="module")
def s2p() -> cd.CNMFModel:
    return cd.open_suite2p(S2P)


def test_fixture_is_real_suite2p_output() -> None:
    stat = _stat()
    assert len(stat) == 20 and sum(int(s["overlap"].sum()) for s in stat) > 0  # overlaps exist
    assert (S2P / "data.bin").stat().st_size == 2 * 300 * 48 * 56


def test_footprints_are_suite2p_masks(s2p: cd.CNMFModel) -> None:
    A = _sparse_compute(s2p.A).toarray()
    masks = _masks_by_hand()
    # pixel p of A is (i, j) = (p % d1, p // d1): Fortran order
    dense = A.T.reshape((s2p.K, 56, 48)).transpose(0, 2, 1)
    np.testing.assert_allclose(dense, masks, rtol=1e-12, atol=0)
    assert s2p.dims == (48, 56) and s2p.T == 300


def test_masks_reproduce_suite2p_F(s2p: cd.CNMFModel) -> None:
    """suite2p's own extraction: F = masks · Y, to float32 rounding."""
    Y = _movie()
    F_ours = np.einsum("kyx,tyx->kt", _masks_by_hand(), Y)
    F = np.load(S2P / "F.npy").astype(np.float64)
    np.testing.assert_allclose(F_ours, F, rtol=2e-6, atol=1e-3)


def test_traces_are_least_squares(s2p: cd.CNMFModel) -> None:
    masks = _masks_by_hand().reshape(s2p.K, -1)
    F = np.load(S2P / "F.npy").astype(np.float64)
    C_ref = np.linalg.lstsq(masks @ masks.T, F, rcond=None)[0]  # (AᵀA)⁻¹ F, dense
    np.testing.assert_allclose(s2p.C.compute(), C_ref, rtol=1e-10, atol=1e-9)
    # the residual of the reconstruction carries nothing the masks see: Aᵀ(Y − A·C) ≈ 0
    Y = _movie()
    R = Y - cd.rcm(s2p)[:]
    seen = np.einsum("kyx,tyx->kt", _masks_by_hand(), R)
    assert np.abs(seen).max() < 1e-3 * np.abs(F).max()


def test_rcm_frames_match_dense_reference(s2p: cd.CNMFModel) -> None:
    masks = _masks_by_hand()
    C = np.linalg.lstsq(
        masks.reshape(s2p.K, -1) @ masks.reshape(s2p.K, -1).T,
        np.load(S2P / "F.npy").astype(np.float64),
        rcond=None,
    )[0]
    good = np.flatnonzero(np.load(S2P / "iscell.npy")[:, 0] > 0.5)
    for t in (0, 151, 299):
        np.testing.assert_allclose(
            cd.rcm(s2p)[t], np.einsum("kyx,k->yx", masks, C[:, t]), rtol=1e-10, atol=1e-8
        )
        np.testing.assert_allclose(
            cd.rcm(s2p, "good")[t],
            np.einsum("kyx,k->yx", masks[good], C[good, t]),
            rtol=1e-10,
            atol=1e-8,
        )
    res = cd.residuals(s2p)[42]
    np.testing.assert_allclose(
        res, _movie()[42] - np.einsum("kyx,k->yx", masks, C[:, 42]), atol=1e-8
    )


def test_opening_computes_nothing() -> None:
    with raise_if_dask_computes():
        m = cd.open_suite2p(S2P)
        cd.rcm(m, "good").data  # noqa: B018 (the graph only)


def test_movie_is_lazy_int16_frame_major(s2p: cd.CNMFModel) -> None:
    assert s2p.Y is not None and s2p.Y.dtype == np.int16 and s2p.Y.shape == (300, 48, 56)
    ref = np.fromfile(S2P / "data.bin", np.int16).reshape(300, 48, 56)
    np.testing.assert_array_equal(cd.raw(s2p)[17], ref[17])
    m = cd.open_suite2p(S2P, frame_chunk=64)
    assert m.Y is not None and m.Y.chunks[0] == (64, 64, 64, 64, 44)
    np.testing.assert_array_equal(m.Y[100:130].compute(), ref[100:130])


def test_iscell_meanimg_and_metadata(s2p: cd.CNMFModel) -> None:
    iscell = np.load(S2P / "iscell.npy")
    np.testing.assert_array_equal(s2p.components("good"), np.flatnonzero(iscell[:, 0] == 1))
    np.testing.assert_array_equal(s2p.components("bad"), np.flatnonzero(iscell[:, 0] == 0))
    np.testing.assert_array_equal(s2p.extras["iscell_prob"], iscell[:, 1])
    ops = np.load(S2P / "ops.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(s2p.extras["meanImg"], ops["meanImg"])
    assert s2p.fr == ops["fs"] == 10.0
    assert s2p.S is not None and s2p.S.shape == (20, 300)
    assert "suite2p_stat" in s2p.files and s2p.files["movie"].name == "data.bin"


@pytest.mark.parametrize("layout", ["settings", "ops"])
def test_both_layouts(tmp_path: Path, layout: str, s2p: cd.CNMFModel) -> None:
    """suite2p >= 1.0 (db / settings / outputs) and the pre-1.0 ops.npy give the same model."""
    d = tmp_path / "plane0"
    shutil.copytree(S2P, d)
    drop = (
        ["ops.npy"]
        if layout == "settings"
        else ["db.npy", "settings.npy", "reg_outputs.npy", "detect_outputs.npy"]
    )
    for name in drop:
        (d / name).unlink()
    m = cd.open_suite2p(d)
    np.testing.assert_array_equal(cd.rcm(m)[9], cd.rcm(s2p)[9])
    np.testing.assert_array_equal(m.extras["meanImg"], s2p.extras["meanImg"])
    assert m.fr == 10.0


def test_old_flat_ops_with_allow_overlap(tmp_path: Path) -> None:
    """A pre-1.0 flat ops dict; allow_overlap=True keeps overlapping pixels in the masks."""
    d = tmp_path / "plane0"
    shutil.copytree(S2P, d)
    for name in ("db.npy", "settings.npy", "reg_outputs.npy", "detect_outputs.npy"):
        (d / name).unlink()
    ops = np.load(d / "ops.npy", allow_pickle=True).item()
    flat = {k: ops[k] for k in ("Ly", "Lx", "nframes", "fs", "meanImg")}
    flat["allow_overlap"] = True
    np.save(d / "ops.npy", flat, allow_pickle=True)
    m = cd.open_suite2p(d)
    assert m.extras["allow_overlap"] is True
    masks = _masks_by_hand(allow_overlap=True)
    A = _sparse_compute(m.A).toarray().T.reshape((m.K, 56, 48)).transpose(0, 2, 1)
    np.testing.assert_allclose(A, masks, rtol=1e-12)
    flatm = masks.reshape(m.K, -1)
    F = np.load(S2P / "F.npy").astype(np.float64)
    np.testing.assert_allclose(
        m.C.compute(), np.linalg.solve(flatm @ flatm.T, F), rtol=1e-8, atol=1e-8
    )


# ------------------------------------------------------------------ bad input


@pytest.fixture
def plane(tmp_path: Path) -> Path:
    d = tmp_path / "plane0"
    shutil.copytree(S2P, d)
    return d


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(cd.MissingFileError, match="does not exist"):
        cd.open_suite2p(tmp_path / "nope")


def test_missing_stat(plane: Path) -> None:
    (plane / "stat.npy").unlink()
    with pytest.raises(cd.MissingFileError, match=r"no stat\.npy"):
        cd.open_suite2p(plane)


def test_missing_F(plane: Path) -> None:
    (plane / "F.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"no F\.npy"):
        cd.open_suite2p(plane)


def test_missing_options(plane: Path) -> None:
    for name in ("ops.npy", "db.npy"):
        (plane / name).unlink()
    with pytest.raises(cd.MissingFileError, match=r"neither ops\.npy"):
        cd.open_suite2p(plane)


def test_roi_without_lam(plane: Path) -> None:
    stat = _stat()
    del stat[3]["lam"]
    np.save(plane / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    with pytest.raises(cd.FileFormatError, match=r"ROI 3 lacks \['lam'\]"):
        cd.open_suite2p(plane)


def test_traces_wrong_shape(plane: Path) -> None:
    np.save(plane / "F.npy", np.zeros((19, 300), np.float32))
    with pytest.raises(cd.FileFormatError, match=r"F\.npy .* shape \(19, 300\)"):
        cd.open_suite2p(plane)


def test_iscell_wrong_shape(plane: Path) -> None:
    np.save(plane / "iscell.npy", np.zeros((5, 2)))
    with pytest.raises(cd.FileFormatError, match=r"iscell\.npy .* \(20, 2\)"):
        cd.open_suite2p(plane)


def test_truncated_data_bin(plane: Path) -> None:
    with open(plane / "data.bin", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(cd.FileFormatError, match=r"data\.bin has 1,000 bytes"):
        cd.open_suite2p(plane)


def test_damaged_stat(plane: Path) -> None:
    (plane / "stat.npy").write_bytes(b"not numpy")
    with pytest.raises(cd.FileFormatError, match=r"stat\.npy"):
        cd.open_suite2p(plane)


def test_rois_outside_frame(plane: Path) -> None:
    stat = _stat()
    stat[0]["xpix"] = stat[0]["xpix"] + 100
    np.save(plane / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    with pytest.raises(cd.FileFormatError, match="outside the 48 x 56 frame"):
        cd.open_suite2p(plane)


def test_no_movie_without_data_bin(plane: Path) -> None:
    (plane / "data.bin").unlink()
    m = cd.open_suite2p(plane)
    assert m.Y is None and cd.rcm(m)[0].shape == (48, 56)
