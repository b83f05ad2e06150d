"""Non-finite values (NaN, inf) in the movie or the factors: detected where data is read,
reported with counts, and one documented rule for images and extrema."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

import caiman_dask as cd
from caiman_dask.testing import dense_reference

STATS = ["mean", "std", "min", "max"]


@pytest.fixture
def model():
    m = cd.synthetic(dims=(20, 24), T=60, K=5, seed=3)
    Y = np.array(m.Y.compute())
    Y[17, 4, 6] = np.nan  # one pixel, one frame
    Y[30, 10, 2] = np.inf  # another pixel
    return cd.from_arrays(
        m.A,
        m.C.compute(),
        dims=m.dims,
        b=m.b.compute(),
        f=m.f.compute(),
        Y=da.from_array(Y, chunks=(16, 20, 24)),
    )


def _bad_pixels(dense: np.ndarray) -> np.ndarray:
    return ~np.isfinite(dense).all(axis=0)


def test_residual_projections_mark_and_count_nonfinite_pixels(model):
    cd.forget_statistics()
    res = cd.residuals(model)
    dense = dense_reference(model, "residuals")
    bad = _bad_pixels(dense)
    assert bad.sum() == 2
    with pytest.warns(cd.NaNWarning, match=r"2 of 480 pixels hold non-finite values"):
        imgs = cd.project(res, [*STATS, "corr"])
    for k in [*STATS, "corr"]:
        assert np.isnan(imgs[k][bad]).all(), k  # one rule: NaN, min and max included
    good = ~bad
    ref = dense[:, good]  # (the finite pixels only: the reference itself needs no errstate)
    np.testing.assert_allclose(imgs["mean"][good], ref.mean(0), rtol=1e-10)
    np.testing.assert_allclose(imgs["std"][good], ref.std(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(imgs["min"][good], ref.min(0), rtol=1e-10)
    np.testing.assert_allclose(imgs["max"][good], ref.max(0), rtol=1e-10)
    # extrema over the movie leave the non-finite pixels out (all their frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cd.NaNWarning)
        lo, hi = res.min, res.max
    assert lo == pytest.approx(dense[:, good].min(), rel=1e-12)
    assert hi == pytest.approx(dense[:, good].max(), rel=1e-12)


def test_windows_without_the_bad_frames_are_clean(model):
    res = cd.residuals(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: frames 0..16 are finite
        imgs = cd.project(res, STATS, frames=slice(0, 17))
    assert np.isfinite(imgs["max"]).all()
    with pytest.warns(cd.NaNWarning, match=r"1 of 480 pixels .* frames=slice\(0, 20"):
        cd.project(res, STATS, frames=slice(0, 20))


def test_interactive_frames_warn_with_counts(model):
    res = cd.residuals(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res[16]  # a finite frame: no warning
    with pytest.warns(cd.NaNWarning, match=r"frames 17 hold 1 NaN and 0 inf"):
        frame = res[17]
    assert np.isnan(frame[4, 6]) and np.isfinite(np.delete(frame.ravel(), 4 * 24 + 6)).all()
    with pytest.warns(cd.NaNWarning, match=r"0 NaN and 1 inf"):
        cd.raw(model)[30]


def test_nonfinite_factors_warn_on_load_and_in_bulk_tasks():
    m = cd.synthetic(dims=(16, 18), T=40, K=4, seed=5)
    C = np.array(m.C.compute())
    C[2, 11] = np.inf
    m2 = cd.from_arrays(m.A, C, dims=m.dims)
    rcm = cd.rcm(m2)
    with pytest.warns(cd.NaNWarning, match=r"factor C has 1 inf"):
        rcm[0]
    with pytest.warns(cd.NaNWarning, match=r"traces of this block hold 0 NaN and 1 inf"):
        rcm.data.compute()
    with pytest.warns(cd.NaNWarning, match=r"pixels hold non-finite values"):
        imgs = cd.project(rcm, STATS)
    under = np.asarray(m2.A.compute().todense())[:, 2] != 0
    bad = np.isnan(imgs["mean"]).reshape(-1, order="F")
    np.testing.assert_array_equal(bad, under)  # exactly the pixels component 2 touches
    assert np.isnan(imgs["max"].reshape(-1, order="F")[under]).all()


def test_exports_report_nonfinite_pixels(model, tmp_path):
    with pytest.warns(cd.NaNWarning) as record:
        cd.to_zarr(model, tmp_path / "x.zarr", movies=("residuals",), projections=STATS)
    messages = [str(w.message) for w in record]
    assert any("2 of 480 pixels hold non-finite values" in m for m in messages)  # images
    assert any("frames of this block hold" in m for m in messages)  # the blocks written
    back = cd.open_zarr(tmp_path / "x.zarr")
    del back


def test_integer_exports_refuse_nonfinite_movies(model, tmp_path):
    with (
        warnings.catch_warnings(),  # (reported when the statistics were computed, maybe earlier)
        pytest.raises(cd.OptionError, match=r"non-finite values \(NaN or inf\) at 2 pixels"),
    ):
        warnings.simplefilter("ignore", cd.NaNWarning)
        cd.to_zarr(model, tmp_path / "i.zarr", movies=("residuals",), dtype="int16")
    assert not (tmp_path / "i.zarr").exists()


def test_bulk_blocks_of_y_based_movies_report_nonfinite_values(model):
    with pytest.warns(cd.NaNWarning) as record:
        cd.residuals(model, frame_chunk=20).data.compute()
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2  # frames 0..19 (a NaN at frame 17), 20..39 (an inf at frame 30)
    assert "hold 0 NaN and 1 inf value(s) of 9600" in messages[0]
    assert "hold 1 NaN and 0 inf value(s) of 9600" in messages[1]
    clean = cd.residuals(model, frame_chunk=10).data[:10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean.compute()  # the block of frames 0..9 is finite: no warning
