"""Frames of the lazy movies against CaImAn's own files and the float64 references.

Tolerance: ``assert_close_scaled(rtol=1e-10)``, i.e. |a - e| <= 1e-10 (|e| + max|e|), on the
float64 paths; the fixtures README reports that independent float64 readers agree to 3e-14.
"""

from __future__ import annotations

import numpy as np
import pytest

import caiman_dask as cd
from caiman_dask.testing import assert_close_scaled

from .conftest import MMAP_2P_F

MOVIES = [("rcm", "all"), ("rcm_good", "good"), ("rcb", None), ("residual", None)]


def _movie(model, name, components):
    if name.startswith("rcm"):
        return cd.rcm(model, components)
    if name == "rcb":
        return cd.rcb(model)
    return cd.residuals(model)


@pytest.mark.parametrize(("name", "components"), MOVIES)
def test_frames_at_indices(model_2p, refs_2p, name, components):
    mv = _movie(model_2p, name, components)
    assert mv.dtype == np.float64
    fi = refs_2p["frame_indices"]
    assert_close_scaled(mv[fi], refs_2p[f"{name}_at_frame_indices"])
    for n, t in enumerate(fi):
        frame = mv[int(t)]
        assert frame.flags.c_contiguous and frame.shape == (60, 80)
        assert_close_scaled(frame, refs_2p[f"{name}_at_frame_indices"][n])


@pytest.mark.parametrize(("name", "components"), MOVIES)
def test_slice_and_dask(model_2p, refs_2p, name, components):
    mv = _movie(model_2p, name, components)
    t0, t1 = refs_2p["slice_start_stop"]
    ref = refs_2p[f"{name}_frames_10_50"]
    assert_close_scaled(mv[t0:t1], ref)
    assert_close_scaled(mv.data[t0:t1].compute(), ref)
    assert_close_scaled(mv[t0:t1, 5:20, ::-3], ref[:, 5:20, ::-3])
    assert_close_scaled(mv[t0 + 3, 7, :], ref[3, 7, :])


def test_sums_over_whole_movie(model_2p, refs_2p):
    rcm_sum = cd.rcm(model_2p).data.sum(dtype=np.float64).compute()
    res_sum = cd.residuals(model_2p).data.sum(dtype=np.float64).compute()
    np.testing.assert_allclose(rcm_sum, refs_2p["rcm_sum_all"], rtol=1e-10)
    # the residual sum is a small difference of large sums: relative to the movie's total
    y_total = float(np.abs(model_2p.Y.compute().astype(np.float64)).sum())
    assert abs(res_sum - refs_2p["residual_sum_all"]) <= 1e-12 * y_total


def test_good_components_are_caimans(model_2p, refs_2p):
    np.testing.assert_array_equal(model_2p.idx_components, refs_2p["idx_components"])
    np.testing.assert_array_equal(model_2p.idx_components_bad, refs_2p["idx_components_bad"])
    assert model_2p.dims == tuple(refs_2p["dims"])
    assert model_2p.T == int(refs_2p["T"])


def test_residuals_with_the_motion_corrected_f_memmap(caiman_dir, refs_2p):
    """The F memmap is the C memmap minus CaImAn's +0.0001 (float32-rounded)."""
    m = cd.open_cnmf(caiman_dir / "cnmf_2p.hdf5", movie=caiman_dir / MMAP_2P_F)
    res = cd.residuals(m)
    diff = refs_2p["residual_at_frame_indices"] - res[refs_2p["frame_indices"]]
    assert 9.0e-5 <= diff.min() and diff.max() <= 1.25e-4


def test_1p_rcm_frames(caiman_dir, refs_1p):
    from .conftest import MMAP_1P_C

    m = cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=caiman_dir / MMAP_1P_C)
    assert m.background == "ring" and m.nb == 0
    mv = cd.rcm(m, dtype=np.float64)
    assert_close_scaled(mv[refs_1p["frame_indices"]], refs_1p["rcm_at_frame_indices"])
    assert_close_scaled(mv.data[10:50].compute(), refs_1p["rcm_frames_10_50"])
    # float32 factors: the default dtype is float32, within float32 rounding
    mv32 = cd.rcm(m)
    assert mv32.dtype == np.float32
    np.testing.assert_allclose(
        mv32[10:50],
        refs_1p["rcm_frames_10_50"],
        rtol=0,
        atol=1e-5 * np.abs(refs_1p["rcm_frames_10_50"]).max(),
    )
