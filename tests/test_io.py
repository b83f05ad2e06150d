"""Readers: CaImAn memmaps, cnmf.save() HDF5, TIFF, HDF5, zarr, NumPy; bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse
import tifffile

import caiman_dask as cd
from caiman_dask._io import CSCColumnsBackend, read_cnmf_hdf5

from .conftest import MMAP_1P_C, MMAP_2P_C, MMAP_2P_F


def caiman_frames(path, dims, T, order):
    """CaImAn's own convention, literally: Yr (P, T) → reshape(Yr.T, (T,)+dims, order='F')."""
    Yr = np.memmap(path, np.float32, "r", shape=(int(np.prod(dims)), T), order=order)
    return np.reshape(np.asarray(Yr).T, (T, *dims), order="F")


@pytest.mark.parametrize(
    ("name", "dims", "order"),
    [(MMAP_2P_C, (60, 80), "C"), (MMAP_2P_F, (60, 80), "F"), (MMAP_1P_C, (48, 64), "C")],
)
def test_memmaps_match_caimans_layout(caiman_dir, name, dims, order):
    src = cd.open_movie(caiman_dir / name)
    assert src.shape == (400, *dims)
    ref = caiman_frames(caiman_dir / name, dims, 400, order)
    np.testing.assert_array_equal(src.data.compute(), ref)
    np.testing.assert_array_equal(src.read((slice(10, 50), slice(3, 9))), ref[10:50, 3:9])
    np.testing.assert_array_equal(src.read((399,)), ref[399])


def test_c_and_f_memmaps_differ_by_caimans_offset(caiman_dir):
    c = cd.open_movie(caiman_dir / MMAP_2P_C).data.compute().astype(np.float64)
    f = cd.open_movie(caiman_dir / MMAP_2P_F).data.compute().astype(np.float64)
    d = c - f
    assert 9.0e-5 <= d.min() and d.max() <= 1.25e-4


def test_tiff_matches_tifffile(caiman_dir):
    src = cd.open_movie(caiman_dir / "mov_2p.tif", frame_chunk=64)
    ref = tifffile.imread(caiman_dir / "mov_2p.tif")
    assert src.shape == ref.shape == (400, 60, 80)
    assert src.data.chunks[0][0] == 64
    np.testing.assert_array_equal(src.data.compute(), ref)
    np.testing.assert_array_equal(src.read((slice(5, 9), 3)), ref[5:9, 3])
    np.testing.assert_array_equal(src.read(([7, 2],)), ref[[7, 2]])


def test_tiff_3d_volumes(tmp_path, rng):
    vol = rng.integers(0, 1000, size=(6, 4, 5, 7), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack", metadata={"axes": "TZYX"})
    src = cd.open_movie(tmp_path / "vol.tif", frame_chunk=4)
    assert src.shape == (6, 4, 5, 7)
    np.testing.assert_array_equal(src.data.compute(), vol)
    np.testing.assert_array_equal(src.read((slice(2, 5), 1)), vol[2:5, 1])


def test_hdf5_zarr_npy_numpy_and_dask(tmp_path, rng):
    import dask.array as da
    import zarr

    mov = rng.normal(size=(11, 6, 5)).astype(np.float32)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["mov"] = mov
        f["other"] = np.zeros(3)
    z = zarr.create_array(
        str(tmp_path / "m.zarr"), shape=mov.shape, chunks=(4, 6, 5), dtype=mov.dtype
    )
    z[:] = mov
    np.save(tmp_path / "m.npy", mov)
    sources = [
        tmp_path / "m.h5",
        tmp_path / "m.zarr",
        tmp_path / "m.npy",
        mov,
        da.from_array(mov, chunks=(3, 2, 5)),
        zarr.open_array(str(tmp_path / "m.zarr")),
    ]
    for s in sources:
        src = cd.open_movie(s)
        np.testing.assert_array_equal(src.data.compute(), mov)
        np.testing.assert_array_equal(src.read((slice(2, 7), 1)), mov[2:7, 1])
        assert all(len(c) == 1 for c in src.data.chunks[1:])


def test_memmap_name_parsing():
    parse = cd.parse_memmap_name
    assert parse("mov_2p_rig__d1_60_d2_80_d3_1_order_F_frames_400.mmap") == ((60, 80), "F", 400)
    assert parse("/x/memmap_d1_5_d2_6_d3_7_order_C_frames_9.mmap") == ((5, 6, 7), "C", 9)
    # CaImAn takes the token after the *last* key
    assert parse("d1_3_memmap_d1_60_d2_80_d3_1_order_C_frames_4.mmap")[0] == (60, 80)
    with pytest.raises(cd.FileFormatError, match="lacks the field"):
        parse("movie.mmap")
    with pytest.raises(cd.FileFormatError, match="order 'X'"):
        parse("m_d1_2_d2_2_d3_1_order_X_frames_3.mmap")
    with pytest.raises(cd.FileFormatError, match="non-integer"):
        parse("m_d1_a_d2_2_d3_1_order_C_frames_3.mmap")


def test_memmap_size_disagreeing_with_name(copy_fixture):
    p = copy_fixture(MMAP_2P_C, "memmap_d1_60_d2_80_d3_1_order_C_frames_401.mmap")
    with pytest.raises(cd.FileFormatError, match=r"7,680,000 bytes.*T=401.*7,699,200"):
        cd.open_movie(p)
    p.unlink()
    q = copy_fixture(MMAP_2P_C, "short_d1_60_d2_80_d3_1_order_C_frames_400.mmap")
    with open(q, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(cd.FileFormatError, match="truncated"):
        cd.open_movie(q)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cd.open_movie(tmp_path / "nope.mmap")
    (tmp_path / "x.avi").write_bytes(b"1234")
    with pytest.raises(cd.FileFormatError, match=r"suffix '.avi'"):
        cd.open_movie(tmp_path / "x.avi")
    with pytest.raises(cd.OptionError, match="path or an array"):
        cd.open_movie(42)


def test_cnmf_hdf5_reader(caiman_dir):
    r = read_cnmf_hdf5(caiman_dir / "cnmf_2p.hdf5")
    assert r["dims"] == (60, 80)
    assert r["A"].shape == (4800, 31) and r["C"].shape == (31, 400)
    assert r["b"].shape == (4800, 2) and r["f"].shape == (2, 400)
    assert r["W"] is None and r["b0"] is None
    assert r["F_dff"].shape == (31, 400) and r["YrA"].shape == (31, 400)
    assert r["fr"] == 30.0
    # byte strings |S32 parsed as floats
    with h5py.File(caiman_dir / "cnmf_2p.hdf5", "r") as f:
        first = float(f["estimates/bl"][0])
    assert r["extras"]["bl"].dtype == np.float64 and r["extras"]["bl"][0] == first
    r1 = read_cnmf_hdf5(caiman_dir / "cnmf_1p.hdf5")
    assert r1["b"] is None and r1["f"] is None and r1["F_dff"] is None
    assert r1["W"].shape == (768, 768) and r1["b0"].shape == (3072,)
    assert r1["ssub_B"] == 2


def test_sparse_chunks_read_only_their_columns(caiman_dir, monkeypatch):
    r = read_cnmf_hdf5(caiman_dir / "cnmf_2p.hdf5", component_chunk=10)
    A = r["A"]
    assert A.chunks[1] == (10, 10, 10, 1)
    calls = []
    orig = CSCColumnsBackend.columns

    def spy(self, k0, k1):
        calls.append((k0, k1))
        return orig(self, k0, k1)

    monkeypatch.setattr(CSCColumnsBackend, "columns", spy)
    block = A.blocks[0, 2].compute()
    assert calls == [(20, 30)]
    with h5py.File(caiman_dir / "cnmf_2p.hdf5", "r") as f:
        g = f["estimates/A"]
        full = scipy.sparse.csc_matrix(
            (g["data"][:], g["indices"][:], g["indptr"][:]), shape=tuple(g["shape"][:])
        )
    np.testing.assert_array_equal(block.todense(), full[:, 20:30].toarray())


def test_files_are_opened_read_only(caiman_dir, model_2p):
    import os

    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in caiman_dir.iterdir()}
    cd.residuals(model_2p)[5]
    cd.residuals(model_2p).data[:20].compute()
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in caiman_dir.iterdir()}
    assert before == after
    assert not os.access(caiman_dir / "cnmf_2p.hdf5", os.W_OK) or True  # read-only by mode


def test_io_package_reexports_the_readers():
    """``caiman_dask._io`` is a package of one-job modules; its names stay importable."""
    import caiman_dask._io as io

    assert io.open_movie is cd.open_movie and io.MovieSource is cd.MovieSource
    assert io.parse_memmap_name is cd.parse_memmap_name
    assert set(io.__all__) == {
        "CSCColumnsBackend",
        "MovieSource",
        "check_csc",
        "check_frame_chunk",
        "default_frame_chunk",
        "memmap_candidates",
        "open_movie",
        "parse_memmap_name",
        "read_cnmf_hdf5",
        "sparse_to_scipy",
    }
    assert all(getattr(io, n).__module__.startswith("caiman_dask._io.") for n in io.__all__)


def test_reader_errors_are_ours_and_builtin(tmp_path):
    assert issubclass(cd.FileFormatError, cd.CaimanDaskError)
    assert issubclass(cd.FileFormatError, ValueError)
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(cd.FileFormatError, match=r"cannot open .*junk\.hdf5.* as HDF5"):
        read_cnmf_hdf5(tmp_path / "junk.hdf5")
    with pytest.raises(cd.FileFormatError, match=r"cannot open .*junk\.hdf5.* as HDF5"):
        cd.open_movie(tmp_path / "junk.hdf5")


def test_csc_group_with_a_bad_shape_is_a_format_error(tmp_path):
    path = cd.write_cnmf_hdf5(
        tmp_path / "c.hdf5", A=scipy.sparse.csc_matrix(np.eye(6, 2)), C=np.ones((2, 4)), dims=(2, 3)
    )
    with h5py.File(path, "r+") as f:
        del f["estimates/A/shape"]
        f["estimates/A/shape"] = np.array([6, 2, 1])
    with pytest.raises(cd.FileFormatError, match=r"/estimates/A/shape is \(6, 2, 1\).*2 entries"):
        read_cnmf_hdf5(path)


def test_hdf5_with_several_movies_asks_for_key(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((3, 2, 2))
        f["b"] = np.zeros((3, 2, 2))
    with pytest.raises(cd.OptionError, match=r"2 candidate movie datasets \['a', 'b'\].*key="):
        cd.open_movie(tmp_path / "two.h5")
    assert cd.open_movie(tmp_path / "two.h5", key="b").shape == (3, 2, 2)
