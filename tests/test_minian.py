"""cd.open_minian on stores written by minian's own save_minian (tests/data/make_minian.py),
against dense float64 references read with plain zarr and NumPy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import caiman_dask as cd
from caiman_dask._model import _sparse_compute
from caiman_dask.testing import raise_if_dask_computes

MN = Path(__file__).resolve().parent / "data" / "minian"


def _read(name: str) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(MN / f"{name}.zarr" / name), mode="r")[...])


@pytest.fixture(scope="module")
def mn() -> cd.CNMFModel:
    return cd.open_minian(MN, movie="Y_fm_chk", fr=20.0)


def test_footprints_dense_to_sparse(mn: cd.CNMFModel) -> None:
    A = _read("A").astype(np.float64)  # (unit_id, height, width)
    assert mn.dims == (30, 38) and mn.K == 6 and mn.T == 120
    got = _sparse_compute(mn.A).toarray()  # (P, K), p = i + height * j
    ref = np.stack([a.ravel(order="F") for a in A], axis=1)
    np.testing.assert_array_equal(got, ref)
    assert mn.A.numblocks[1] == 2  # read in chunks of units (save_minian's unit chunks)
    np.testing.assert_array_equal(mn.extras["unit_id"], [3, 5, 8, 9, 14, 20])


def test_rcm_and_residuals_match_dense_reference(mn: cd.CNMFModel) -> None:
    A = _read("A").astype(np.float64)
    C = _read("C").astype(np.float64) + _read("b0") + _read("c0")
    b, f = _read("b").astype(np.float64), _read("f").astype(np.float64)
    Y = _read("Y_fm_chk").astype(np.float64)
    for t in (0, 64, 119):
        rcm = np.einsum("khw,k->hw", A, C[:, t])
        np.testing.assert_allclose(cd.rcm(mn)[t], rcm, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            cd.rcb(mn, dtype=np.float64)[t], b * f[t], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            cd.residuals(mn, dtype=np.float64)[t], Y[t] - rcm - b * f[t], rtol=1e-12, atol=1e-9
        )
    np.testing.assert_array_equal(mn.S.compute(), _read("S"))
    assert mn.fr == 20.0


def test_opening_computes_nothing() -> None:
    with raise_if_dask_computes():
        m = cd.open_minian(MN, movie="Y_fm_chk")
        cd.residuals(m).data  # noqa: B018 (the graph only)


def test_baseline_false_is_minians_AC() -> None:
    m = cd.open_minian(MN, baseline=False)
    A, C = _read("A").astype(np.float64), _read("C").astype(np.float64)
    np.testing.assert_allclose(
        cd.rcm(m, dtype=np.float64)[7], np.einsum("khw,k->hw", A, C[:, 7]), rtol=1e-6, atol=1e-6
    )
    assert m.Y is None


def test_unit_order_follows_C(tmp_path: Path) -> None:
    """A stored in another unit order is matched to C by unit_id."""
    d = tmp_path / "mn"
    shutil.copytree(MN, d)
    g = zarr.open_group(str(d / "A.zarr"), mode="r+")
    a = g["A"][...]
    g["A"][...] = a[::-1]
    g["unit_id"][...] = g["unit_id"][...][::-1]
    m = cd.open_minian(d)
    ref = cd.open_minian(MN)
    np.testing.assert_array_equal(cd.rcm(m)[5], cd.rcm(ref)[5])


def test_to_nwb_round_trip(mn: cd.CNMFModel, tmp_path: Path) -> None:
    back = cd.open_nwb(cd.to_nwb(mn, tmp_path / "mn.nwb", movie="write"))
    for t in (3, 99):
        np.testing.assert_array_equal(cd.rcm(back)[t], cd.rcm(mn)[t])
        np.testing.assert_array_equal(cd.residuals(back)[t], cd.residuals(mn)[t])


# ------------------------------------------------------------------ bad input


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(cd.MissingFileError, match="does not exist"):
        cd.open_minian(tmp_path / "nope")


def test_missing_A(tmp_path: Path) -> None:
    d = tmp_path / "mn"
    shutil.copytree(MN, d)
    shutil.rmtree(d / "A.zarr")
    with pytest.raises(cd.MissingFileError, match=r"no A\.zarr"):
        cd.open_minian(d)


def test_missing_movie_store() -> None:
    with pytest.raises(cd.MissingFileError, match=r"no varr\.zarr"):
        cd.open_minian(MN, movie="varr")


def test_units_disagree(tmp_path: Path) -> None:
    d = tmp_path / "mn"
    shutil.copytree(MN, d)
    g = zarr.open_group(str(d / "C.zarr"), mode="r+")
    g["unit_id"][...] = np.arange(100, 106)
    with pytest.raises(cd.FileFormatError, match="different units"):
        cd.open_minian(d)


def test_wrong_dimensions(tmp_path: Path) -> None:
    d = tmp_path / "mn"
    shutil.copytree(MN, d)
    arr = zarr.open_array(str(d / "S.zarr" / "S"), mode="r+")
    arr.attrs["_ARRAY_DIMENSIONS"] = ["frame", "unit_id"]
    with pytest.raises(cd.FileFormatError, match=r"S\.zarr .* dimensions \('frame', 'unit_id'\)"):
        cd.open_minian(d)


def test_background_half_missing(tmp_path: Path) -> None:
    d = tmp_path / "mn"
    shutil.copytree(MN, d)
    shutil.rmtree(d / "f.zarr")
    with pytest.raises(cd.FileFormatError, match=r"b\.zarr but not f\.zarr"):
        cd.open_minian(d)
