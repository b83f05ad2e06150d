"""The model: open_cnmf, from_arrays, validation errors, NaN warnings, component sets."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import scipy.sparse

import caiman_dask as cd

from .conftest import MMAP_1P_C, MMAP_2P_C


def test_open_cnmf_2p(model_2p):
    m = model_2p
    assert m.dims == (60, 80) and m.K == 31 and m.T == 400 and m.nb == 2
    assert m.background == "lowrank"
    assert m.Y.shape == (400, 60, 80) and m.Y.dtype == np.float32
    assert m.A.shape == (4800, 31)
    import sparse

    assert isinstance(m.A.blocks[0, 0].compute(), sparse.COO)
    assert len(m.idx_components) == 24 and len(m.idx_components_bad) == 7
    assert m.F_dff.shape == (31, 400) and m.S.shape == (31, 400)
    assert m.fr == 30.0
    assert "K=31" in repr(m)
    with pytest.raises(AttributeError):
        m.dims = (1, 2)  # frozen


def test_open_cnmf_1p(caiman_dir):
    m = cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=caiman_dir / MMAP_1P_C)
    assert m.background == "ring" and m.b is None and m.f is None
    assert m.W.shape == (768, 768) and m.b0.shape == (3072,)
    assert len(m.idx_components) == 16 and len(m.idx_components_bad) == 7
    assert m.F_dff is None


def test_open_cnmf_finds_recorded_memmap_beside_file(copy_fixture):
    h5 = copy_fixture("cnmf_2p.hdf5")
    copy_fixture(MMAP_2P_C)
    m = cd.open_cnmf(h5)
    assert m.Y is not None and m.files["movie"].name == MMAP_2P_C
    (h5.parent / MMAP_2P_C).unlink()
    assert cd.open_cnmf(h5).Y is None


def test_idx_components_empty_and_none(copy_fixture):
    h5 = copy_fixture("cnmf_2p.hdf5")
    h5.chmod(0o644)
    with h5py.File(h5, "r+") as f:
        del f["estimates/idx_components"]
        f["estimates/idx_components"] = np.zeros(0, np.int64)
        del f["estimates/idx_components_bad"]
        f.create_dataset("estimates/idx_components_bad", data="NoneType", dtype=h5py.string_dtype())
    m = cd.open_cnmf(h5, movie=None)
    assert m.idx_components.shape == (0,) and m.idx_components_bad is None
    with pytest.warns(cd.EmptyComponentsWarning):
        mv = cd.rcm(m, "good")
    assert not mv[0].any()
    with pytest.raises(cd.ComponentError, match="idx_components_bad"):
        cd.rcm(m, "bad")


def test_dims_fallback_to_root(copy_fixture):
    h5 = copy_fixture("cnmf_2p.hdf5")
    with h5py.File(h5, "r+") as f:
        del f["estimates/dims"]
        f.create_dataset("estimates/dims", data="NoneType", dtype=h5py.string_dtype())
    assert cd.open_cnmf(h5).dims == (60, 80)


def test_truncated_hdf5(copy_fixture):
    h5 = copy_fixture("cnmf_2p.hdf5")
    size = h5.stat().st_size
    with open(h5, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(cd.FileFormatError, match="truncated"):
        cd.open_cnmf(h5)
    with open(h5, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(cd.FileFormatError, match=r"truncated|not an HDF5"):
        cd.open_cnmf(h5)


def test_foreign_files(tmp_path):
    p = tmp_path / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(cd.FileFormatError, match=r"not a CaImAn cnmf\.save"):
        cd.open_cnmf(p)
    q = tmp_path / "text.hdf5"
    q.write_text("hello")
    with pytest.raises(cd.FileFormatError, match="not an HDF5"):
        cd.open_cnmf(q)
    with pytest.raises(FileNotFoundError):
        cd.open_cnmf(tmp_path / "missing.hdf5")


def test_shape_mismatches_name_both_shapes(rng):
    A = scipy.sparse.random(20, 3, density=0.5, random_state=rng)
    C = rng.normal(size=(3, 10))
    with pytest.raises(
        cd.ShapeMismatchError, match=r"C has shape \(4, 10\).*A has shape \(20, 3\)"
    ):
        cd.from_arrays(A, np.zeros((4, 10)), dims=(4, 5))
    with pytest.raises(cd.ShapeMismatchError, match=r"A has shape \(20, 3\).*P=30"):
        cd.from_arrays(A, C, dims=(5, 6))
    with pytest.raises(cd.ShapeMismatchError, match=r"9 frames.*T=10"):
        cd.from_arrays(A, C, dims=(4, 5), Y=np.zeros((9, 4, 5), np.float32))
    with pytest.raises(cd.ShapeMismatchError, match="3-D"):
        cd.from_arrays(A, C, dims=(4, 5, 1), Y=np.zeros((10, 4, 5), np.float32))
    with pytest.raises(cd.ShapeMismatchError, match="Yr"):
        cd.from_arrays(A, C, dims=(4, 5), Y=np.zeros((20, 10), np.float32))
    with pytest.raises(cd.ShapeMismatchError, match=r"nb=2.*nb=3"):
        cd.from_arrays(A, C, dims=(4, 5), b=np.zeros((20, 2)), f=np.zeros((3, 10)))
    with pytest.raises(cd.ShapeMismatchError, match=r"f has shape \(2, 11\)"):
        cd.from_arrays(A, C, dims=(4, 5), b=np.zeros((20, 2)), f=np.zeros((2, 11)))
    with pytest.raises(cd.ShapeMismatchError, match="come together"):
        cd.from_arrays(A, C, dims=(4, 5), b=np.zeros((20, 2)))
    with pytest.raises(cd.ShapeMismatchError, match="traces must be"):
        cd.from_arrays(A, C, dims=(4, 5), F_dff=np.zeros((3, 9)))
    with pytest.raises(cd.ComponentError, match=r"\[3\]"):
        cd.from_arrays(A, C, dims=(4, 5), idx_components=[0, 3])


def test_3d_dims_with_2d_memmap(caiman_dir):
    r = cd.open_cnmf  # noqa: F841
    A = scipy.sparse.random(4800, 2, density=0.1, random_state=0)
    with pytest.raises(cd.ShapeMismatchError, match=r"\(400, 60, 80\)"):
        cd.from_arrays(A, np.zeros((2, 400)), dims=(60, 40, 2), Y=caiman_dir / MMAP_2P_C)


def test_nan_factors_warn(rng):
    A = scipy.sparse.random(20, 3, density=0.5, random_state=rng).tocsc()
    C = rng.normal(size=(3, 10))
    C[1, 4] = np.nan
    m = cd.from_arrays(A, C, dims=(4, 5))
    with pytest.warns(cd.NaNWarning, match=r"factor C has 1 NaN"):
        frame = cd.rcm(m)[4]
    assert np.isnan(frame).any() == bool(A[:, 1].nnz)


def test_from_arrays_accepts_many_kinds(rng, tmp_path):
    import dask.array as da
    import sparse

    A = scipy.sparse.random(20, 3, density=0.5, random_state=rng)
    C = rng.normal(size=(3, 10))
    ref = cd.rcm(cd.from_arrays(A, C, dims=(4, 5)))[...]
    np.save(tmp_path / "C.npy", C)
    for A_, C_ in [
        (A.toarray(), C),
        (sparse.COO.from_scipy_sparse(A), da.from_array(C, chunks=(3, 4))),
        (da.from_array(A.toarray(), chunks=(20, 2)), np.load(tmp_path / "C.npy", mmap_mode="r")),
        (A.tocsr(), C.tolist()),
    ]:
        np.testing.assert_allclose(
            cd.rcm(cd.from_arrays(A_, C_, dims=(4, 5)))[...], ref, rtol=1e-13, atol=1e-13
        )


def test_components_resolution(model_2p):
    m = model_2p
    np.testing.assert_array_equal(m.components("all"), np.arange(31))
    np.testing.assert_array_equal(m.components([-1, 0]), [30, 0])
    np.testing.assert_array_equal(m.components(slice(None, None, 10)), [0, 10, 20, 30])
    mask = np.zeros(31, bool)
    mask[[2, 5]] = True
    np.testing.assert_array_equal(m.components(mask), [2, 5])
    assert m.components(np.int64(4)).tolist() == [4]


def test_fixture_folder_is_untouched(caiman_dir, tmp_path):
    # sanity: tests that modify files work on copies
    shutil.copyfile(caiman_dir / "cnmf_2p.hdf5", tmp_path / "x.hdf5")
    assert (tmp_path / "x.hdf5").stat().st_size == (caiman_dir / "cnmf_2p.hdf5").stat().st_size
