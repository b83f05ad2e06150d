"""cd.open_minian on stores written by minian's own save_minian, against dense float64
references read with plain zarr and NumPy: a seeded ground truth saved by save_minian
(tests/data/minian, tests/data/make_minian.py) and the output of a real run of minian's
pipeline (tests/data/minian_pipeline, tests/data/make_minian_pipeline.py)."""

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


# ------------------------------------------------------- a real minian pipeline run

MP = Path(__file__).resolve().parent / "data" / "minian_pipeline"


def _read_mp(name: str) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(MP / f"{name}.zarr" / name), mode="r")[...])


@pytest.fixture(scope="module")
def mp() -> cd.CNMFModel:
    return cd.open_minian(MP, movie="Y_fm_chk")


@pytest.fixture(scope="module")
def mp_ref() -> dict[str, np.ndarray]:
    """The pipeline's stores as dense float64, and the dense reconstructions."""
    r = {n: _read_mp(n).astype(np.float64) for n in ("A", "C", "b0", "c0", "b", "f", "Y_fm_chk")}
    r["rcm_C"] = np.einsum("khw,kt->thw", r["A"], r["C"])
    r["rcm"] = np.einsum("khw,kt->thw", r["A"], r["C"] + r["b0"] + r["c0"])
    r["rcb"] = r["b"][None] * r["f"][:, None, None]
    r["res"] = r["Y_fm_chk"] - r["rcm"] - r["rcb"]
    return r


def test_pipeline_opens_with_minians_shapes_and_units(mp: cd.CNMFModel) -> None:
    A, C, Y = (
        zarr.open_array(store=str(MP / f"{n}.zarr" / n), mode="r") for n in "A C Y_fm_chk".split()
    )
    uid = np.asarray(zarr.open_array(store=str(MP / "C.zarr" / "unit_id"), mode="r")[...])
    assert mp.dims == tuple(A.shape[1:]) == tuple(Y.shape[1:]) == (60, 80)
    assert (mp.K, mp.T) == tuple(C.shape) == (13, 400)
    assert mp.Y.shape == tuple(Y.shape)
    assert mp.Y.chunks[0] == (100,) * 4  # the pipeline's frame chunks, read as they are
    np.testing.assert_array_equal(mp.extras["unit_id"], uid)
    for name in ("S", "b0", "c0"):
        np.testing.assert_array_equal(
            zarr.open_array(store=str(MP / f"{name}.zarr" / "unit_id"), mode="r")[...], uid
        )
    got = _sparse_compute(mp.A).toarray()
    np.testing.assert_array_equal(got, np.stack([a.ravel(order="F") for a in A[...]], axis=1))
    assert mp.A.numblocks[1] == mp.K  # save_minian wrote A one unit per chunk
    np.testing.assert_array_equal(mp.S.compute(), _read_mp("S"))
    # what minian's notebook leaves beside A, C...: ignored, not an error
    assert (MP / "max_proj.zarr").is_dir()
    assert (MP / "A.zarr" / "session").is_dir()  # meta_dict's scalar coordinates


@pytest.mark.parametrize("baseline", [True, False])
def test_pipeline_rcm_matches_dense_reference(
    mp_ref: dict[str, np.ndarray], baseline: bool
) -> None:
    """``baseline=True``: ``A·(C + b0 + c0)``; ``False``: minian's ``A·C``."""
    m = cd.open_minian(MP, movie="Y_fm_chk", baseline=baseline)
    ref = mp_ref["rcm"] if baseline else mp_ref["rcm_C"]
    # float64 throughout; only the summation order differs (values up to ~60)
    np.testing.assert_allclose(cd.rcm(m)[...], ref, rtol=1e-12, atol=1e-11)
    for t in (0, 99, 100, 257, 399):  # frame reads across the movie's chunk edges
        np.testing.assert_allclose(cd.rcm(m)[t], ref[t], rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(cd.rcb(m)[...], mp_ref["rcb"], rtol=1e-12, atol=1e-12)
    assert not np.allclose(mp_ref["rcm"], mp_ref["rcm_C"])  # the baseline is not zero here


def test_pipeline_residuals_and_projections(
    mp: cd.CNMFModel, mp_ref: dict[str, np.ndarray]
) -> None:
    res = mp_ref["res"]
    np.testing.assert_allclose(cd.residuals(mp)[...], res, rtol=1e-12, atol=1e-10)
    got = cd.project(cd.residuals(mp), ["mean", "max", "std"])
    # streamed float64 sums (Chan merging for std) against NumPy's pairwise two-pass
    np.testing.assert_allclose(got["mean"], res.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["max"], res.max(0), rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(got["std"], res.std(0), rtol=1e-10, atol=1e-12)


def test_pipeline_model_explains_the_movie(mp: cd.CNMFModel, mp_ref: dict[str, np.ndarray]) -> None:
    """minian's model leaves 0.32 of the fitted movie's temporal variance (measured once on
    this fixture: the residuals are about the noise left after the 5x5 median filter, sd
    ~1.6 grey levels). The bound 0.45 leaves room for a rerun of the pipeline, and a wrong
    reading does not pass it: the background alone leaves 1.63, the traces assigned to the
    wrong units 1.74, frames flipped in pixel order 2.27."""
    Y = mp_ref["Y_fm_chk"]
    var = ((Y - Y.mean(0)) ** 2).sum()
    res = cd.residuals(mp)[...]
    assert (res**2).sum() / var < 0.45
    bg_only = Y - cd.rcb(mp)[...]
    assert (bg_only**2).sum() / var > 1.0
    full = mp_ref["C"] + mp_ref["b0"] + mp_ref["c0"]
    wrong = Y - cd.rcm(mp, traces=np.roll(full, 1, axis=0))[...] - cd.rcb(mp)[...]
    assert (wrong**2).sum() / var > 1.0


def test_pipeline_to_nwb_round_trip(mp: cd.CNMFModel, tmp_path: Path) -> None:
    back = cd.open_nwb(cd.to_nwb(mp, tmp_path / "mp.nwb", movie="write", fr=20.0, progress=False))
    np.testing.assert_array_equal(cd.rcm(back)[...], cd.rcm(mp)[...])
    np.testing.assert_array_equal(cd.residuals(back)[...], cd.residuals(mp)[...])
