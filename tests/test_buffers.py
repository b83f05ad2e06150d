"""Recycled output buffers of large slices: reused only when nothing refers to them."""

from __future__ import annotations

import numpy as np
import pytest

import caiman_dask as cd
from caiman_dask import _buffers


@pytest.fixture
def small_pool(monkeypatch):
    monkeypatch.setattr(_buffers, "MIN_BYTES", 1024)
    monkeypatch.setattr(_buffers, "MAX_BYTES", 1 << 24)
    cd.release_buffers()
    yield
    cd.release_buffers()


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_live_results_never_share_memory(small_pool):
    m = cd.synthetic(dims=(24, 20), T=60, K=5, seed=3)
    rcm = cd.rcm(m)
    a = rcm[0:10]
    b = rcm[10:20]
    assert not np.shares_memory(a, b)
    view = a[2:4]  # a view keeps the buffer in use
    del a
    c = rcm[20:30]
    assert not np.shares_memory(view, c) and not np.shares_memory(b, c)
    np.testing.assert_array_equal(view, rcm[2:4])


def test_buffers_are_reused_once_released(small_pool):
    m = cd.synthetic(dims=(24, 20), T=60, K=5, seed=3)
    res = cd.residuals(m)
    first = res[0:10]
    where = _addr(first)
    expected = res[30:40].copy()
    del first
    again = res[30:40]
    assert _addr(again) == where  # the same (already mapped) memory
    np.testing.assert_array_equal(again, expected)  # fully rewritten
    assert _buffers.pooled_bytes() > 0
    assert cd.release_buffers() > 0 and _buffers.pooled_bytes() == 0


def test_small_requests_and_a_disabled_pool_bypass_it(small_pool, monkeypatch):
    assert _buffers.empty((10,), np.float64).base is None  # below MIN_BYTES
    monkeypatch.setattr(_buffers, "MAX_BYTES", 0)
    big = _buffers.empty((64, 64), np.float64)
    assert big.base is None and _buffers.pooled_bytes() == 0


def test_pool_stays_within_its_budget(small_pool, monkeypatch):
    monkeypatch.setattr(_buffers, "MAX_BYTES", 3 * 8192)
    kept = [_buffers.empty((1024,), np.float64) for _ in range(5)]  # 8 KiB each, all in use
    assert _buffers.pooled_bytes() <= 3 * 8192
    assert len({_addr(k) for k in kept}) == 5


def test_pool_tracks_a_bounded_number_of_buffers(small_pool, monkeypatch):
    monkeypatch.setattr(_buffers, "MAX_COUNT", 4)
    kept = [_buffers.empty((1024,), np.float64) for _ in range(10)]  # all in use
    assert len(_buffers._buffers) == 4  # the oldest are forgotten, not reused
    assert len({_addr(k) for k in kept}) == 10
    del kept
    again = [_buffers.empty((1024,), np.float64) for _ in range(4)]
    assert len(_buffers._buffers) == 4 and len({_addr(k) for k in again}) == 4
