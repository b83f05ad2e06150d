"""movie.to_xarray(), xr.open_zarr on our stores, and the np.asarray size guard.

References are dense float64 movies computed with NumPy from the arrays the models are built
from (Fortran pixel order, as CaImAn stores them).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import caiman_dask as cd
from caiman_dask._movie import MAX_DENSE_ENV, max_dense_bytes
from caiman_dask.testing import raise_if_dask_computes


def _model(rng: np.random.Generator, dims: tuple[int, ...], T: int, fr: float | None):
    P, K = int(np.prod(dims)), 4
    A = rng.random((P, K)) * (rng.random((P, K)) < 0.3)
    C = rng.normal(size=(K, T))
    b = rng.random((P, 1))
    f = rng.random((1, T))
    Y = (A @ C + b @ f + rng.normal(scale=0.1, size=(P, T))).astype(np.float32)
    Ymov = Y.T.reshape((T, *dims[::-1])).transpose(0, *range(len(dims), 0, -1))
    m = cd.from_arrays(A, C, dims=dims, b=b, f=f, Y=np.ascontiguousarray(Ymov), fr=fr)

    def movie(x: np.ndarray) -> np.ndarray:  # (P, T) Fortran pixel order -> (T, *dims)
        return x.T.reshape((T, *dims[::-1])).transpose(0, *range(len(dims), 0, -1))

    dense = {
        "rcm": movie(A @ C),
        "residuals": movie(Y.astype(np.float64) - A @ C - b @ f),
    }
    return m, dense


@pytest.mark.parametrize("dims", [(12, 17), (6, 7, 5)])
def test_to_xarray_dims_coords_attrs_values(rng, dims):
    m, dense = _model(rng, dims, T=23, fr=7.5)
    for name, mv in (("rcm", cd.rcm(m)), ("residuals", cd.residuals(m))):
        cd.forget_statistics()
        with raise_if_dask_computes():
            a = mv.to_xarray()
        want_dims = ("t", "y", "x") if len(dims) == 2 else ("t", "z", "y", "x")
        assert a.dims == want_dims and a.shape == (23, *dims)
        assert a.name == name and a.attrs["kind"] == name and a.attrs["fr"] == 7.5
        assert "min" not in a.attrs and "max" not in a.attrs  # never a pass just for attrs
        np.testing.assert_allclose(a["t"].values, np.arange(23) / 7.5, rtol=0, atol=1e-15)
        assert a["t"].attrs["units"] == "s"
        assert a.chunks is not None  # dask-backed
        np.testing.assert_allclose(a.isel(t=5).values, dense[name][5], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.values, dense[name], rtol=1e-6, atol=1e-6)
        # exact extremes appear once known (here: computed by movie.min)
        lo = mv.min
        b = mv.to_xarray()
        assert b.attrs["min"] == lo and b.attrs["max"] == mv.max
        assert b.attrs["min"] == pytest.approx(dense[name].min(), rel=1e-6, abs=1e-6)


def test_to_xarray_without_frame_rate_has_no_time_coordinate(rng):
    m, _ = _model(rng, (8, 9), T=10, fr=None)
    a = cd.rcm(m).to_xarray(name="mine")
    assert a.name == "mine" and "t" not in a.coords and "fr" not in a.attrs


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_store_opens_with_xr_open_zarr_to_the_same(tmp_path, rng, zarr_format):
    m, _ = _model(rng, (10, 13), T=31, fr=15.0)
    store = tmp_path / "s.zarr"
    cd.to_zarr(m, store, zarr_format=zarr_format, progress=False)
    for name, mv in (("rcm", cd.rcm(m)), ("residuals", cd.residuals(m))):
        ds = xr.open_zarr(store, group=name, consolidated=False)  # default decoding
        stored = ds["0"]
        ours = mv.to_xarray()
        assert stored.dims == ours.dims
        # the time coordinate in seconds, as to_xarray gives it (the store's "t" array)
        np.testing.assert_array_equal(stored["t"].values, ours["t"].values)
        assert stored["t"].attrs["units"] == "s"
        # no value is masked as missing (zarr v2 arrays carry no fill value)
        assert not np.isnan(stored.values).any()
        np.testing.assert_array_equal(stored.values, ours.values.astype(stored.dtype))
    img = xr.open_zarr(store, group="projections/rcm/max", consolidated=False)["0"]
    assert img.dims == ("y", "x")
    np.testing.assert_array_equal(img.values, cd.project(cd.rcm(m), "max"))


def test_np_asarray_refuses_movies_above_the_limit(monkeypatch, rng):
    m, dense = _model(rng, (12, 17), T=23, fr=None)
    mv = cd.rcm(m)
    monkeypatch.setenv(MAX_DENSE_ENV, str(mv.nbytes - 1))
    with pytest.raises(cd.DenseMovieError) as err:
        np.asarray(mv)
    assert isinstance(err.value, MemoryError) and isinstance(err.value, cd.CaimanDaskError)
    msg = str(err.value)
    for part in (MAX_DENSE_ENV, "movie.data", "to_xarray()", "movie[t]", str(mv.shape)):
        assert part in msg
    with pytest.raises(cd.DenseMovieError):
        xr.DataArray(mv)  # what the issue saw compute the whole movie
    np.testing.assert_allclose(mv[...], dense["rcm"], rtol=1e-12, atol=1e-12)  # indexing stays
    monkeypatch.setenv(MAX_DENSE_ENV, str(mv.nbytes))
    np.testing.assert_allclose(np.asarray(mv), dense["rcm"], rtol=1e-12, atol=1e-12)
    monkeypatch.setenv(MAX_DENSE_ENV, "inf")
    assert max_dense_bytes() == float("inf")
    np.testing.assert_allclose(np.asarray(mv, dtype=np.float32), dense["rcm"], rtol=1e-6)
    monkeypatch.delenv(MAX_DENSE_ENV)
    assert max_dense_bytes() == 2**30
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(MAX_DENSE_ENV, bad)
        with pytest.raises(cd.OptionError, match=MAX_DENSE_ENV):
            np.asarray(mv)
