"""The synthetic generator: determinism, CaImAn-format files, 2D and 3D."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.signal

import caiman_dask as cd
from caiman_dask._synthetic import _lfilter
from caiman_dask.testing import assert_close_scaled, dense_reference


def test_deterministic_and_realistic():
    a = cd.synthetic(dims=(40, 50), T=200, K=20, seed=4)
    b = cd.synthetic(dims=(40, 50), T=200, K=20, seed=4)
    np.testing.assert_array_equal(a.C.compute(), b.C.compute())
    np.testing.assert_array_equal(a.Y.compute(), b.Y.compute())
    assert a.Y.dtype == np.float32
    A = a.A.compute().todense()
    np.testing.assert_allclose(np.linalg.norm(A, axis=0), 1.0, rtol=1e-12)
    assert (A >= 0).all()
    overlap = ((A > 0).sum(axis=1) >= 2).sum()
    assert overlap > 0, "some pixels must be under several footprints"
    assert (a.C.compute().min(axis=1) < 0).any(), "CaImAn-like negative baselines"
    assert len(a.idx_components) == 16 and len(a.idx_components_bad) == 4
    # the residual of the generating model is the noise (sd 6)
    res = cd.residuals(a).data.compute()
    assert 5.5 < res.std() < 6.5 and abs(res.mean()) < 0.1


@pytest.mark.parametrize("dims", [(30, 20), (12, 10, 6)])
def test_files_round_trip(tmp_path, dims):
    mem = cd.synthetic(dims=dims, T=60, K=8, seed=1)
    disk = cd.synthetic(dims=dims, T=60, K=8, seed=1, path=tmp_path)
    assert disk.files["cnmf"].name == "synthetic.hdf5"
    d3 = dims[2] if len(dims) == 3 else 1
    assert disk.files["movie"].name == (
        f"synthetic_d1_{dims[0]}_d2_{dims[1]}_d3_{d3}_order_F_frames_60.mmap"
    )
    np.testing.assert_array_equal(disk.Y.compute(), mem.Y.compute())
    for kind in ("rcm", "rcb", "residuals"):
        ref = dense_reference(mem, kind)
        mv = getattr(cd, kind)(disk)
        assert_close_scaled(mv.data.compute(), ref, rtol=1e-12)
        assert_close_scaled(mv[[3, 0, 59]], ref[[3, 0, 59]], rtol=1e-12)
    # written files are reused, not rewritten, for the same arguments
    mtime = disk.files["movie"].stat().st_mtime_ns
    cd.synthetic(dims=dims, T=60, K=8, seed=1, path=tmp_path)
    assert disk.files["movie"].stat().st_mtime_ns == mtime


def test_3d_memmap_layout(tmp_path):
    m = cd.synthetic(dims=(6, 5, 4), T=7, K=3, seed=2, path=tmp_path)
    raw = np.fromfile(m.files["movie"], np.float32).reshape(7, -1)  # frame-major, Fortran pixels
    frames = m.Y.compute()
    for t in range(7):
        np.testing.assert_array_equal(raw[t], frames[t].ravel(order="F"))


def test_bad_arguments():
    with pytest.raises(cd.OptionError, match="dims"):
        cd.synthetic(dims=(5,), T=3, K=1)
    with pytest.raises(cd.OptionError, match="T >= 1"):
        cd.synthetic(dims=(5, 5), T=0, K=1)


@pytest.mark.parametrize("T", [0, 1, 2, 3, 500])
def test_filter_is_scipys_lfilter_bit_for_bit(rng, T):
    """The traces' AR(2) and the background's AR(1) filters, as scipy.signal.lfilter."""
    spikes = (rng.random((9, T)) < 0.05) * rng.lognormal(0.0, 0.5, size=(9, T))
    ab = [1.0, -1.7, 0.712]
    got = _lfilter([1.0], ab, spikes)
    np.testing.assert_array_equal(got, scipy.signal.lfilter([1.0], ab, spikes, axis=1))
    x = rng.normal(size=T)
    np.testing.assert_array_equal(
        _lfilter([0.02], [1, -0.98], x), scipy.signal.lfilter([0.02], [1, -0.98], x)
    )
    assert got.dtype == np.float64 and got.shape == spikes.shape


def test_importing_caiman_dask_does_not_import_scipy_signal():
    """(About a second in every process, cluster workers included.)"""
    code = "import sys, caiman_dask; print('scipy.signal' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dense_reference_rejects_unknown_or_impossible_kinds():
    m = cd.synthetic(dims=(8, 9), T=5, K=2, seed=0)
    with pytest.raises(
        cd.OptionError, match=r"kind='raw' is not one of \['rcm', 'rcb', 'residuals'\]"
    ):
        dense_reference(m, "raw")  # type: ignore[arg-type]
    bare = cd.from_arrays(m.A, m.C, dims=m.dims)
    with pytest.raises(cd.OptionError, match="kind='rcb' needs a low-rank background"):
        dense_reference(bare, "rcb")
    no_y = cd.from_arrays(m.A, m.C, dims=m.dims, b=m.b, f=m.f)
    with pytest.raises(cd.OptionError, match="kind='residuals' needs the movie Y"):
        dense_reference(no_y, "residuals")


@pytest.mark.parametrize("dims", [(30, 25), (12, 10, 6)])
def test_ring_synthetic(tmp_path, dims):
    mem = cd.synthetic(dims=dims, T=40, K=6, seed=5, ring_ssub=2, ring_radius=4)
    assert mem.background == "ring" and mem.b is None
    W = mem.W.compute().todense()
    np.testing.assert_allclose(np.asarray(W).sum(axis=1), 1.0, rtol=1e-12)
    disk = cd.synthetic(dims=dims, T=40, K=6, seed=5, ring_ssub=2, ring_radius=4, path=tmp_path)
    assert disk.background == "ring"
    for fn in (cd.rcb, cd.residuals):
        assert_close_scaled(fn(disk).data.compute(), fn(mem)[...], rtol=1e-12)
    # a smooth background: the ring model explains it up to the noise (sd 6)
    assert 4.0 < cd.project(cd.residuals(mem), "std").mean() < 9.0
