"""Streaming accumulators: fed in any block sizes, bit for bit what cd.project gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import caiman_dask as cd
import caiman_dask._statistics as S
from caiman_dask.testing import dense_reference

STATS = ["mean", "std", "min", "max"]
T = 70


@pytest.fixture(scope="module")
def lowrank():
    return cd.synthetic(dims=(18, 22), T=T, K=5, seed=11)


@pytest.fixture(scope="module")
def ring():
    return cd.synthetic(dims=(20, 24), T=T, K=4, seed=12, ring_ssub=2)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Canonical blocks of a few frames, so that blocks are split and merged in every test;
    no statistics cached from elsewhere (a pass with "corr" serves later requests without it,
    equal to rounding, not bit for bit)."""
    monkeypatch.setattr(S, "FOLD_FRAMES", 16)
    monkeypatch.setattr(S, "BLOCK_BYTES", 9 * 18 * 22 * 8)  # 9 frames of the low-rank model
    cd.forget_statistics()


def _sizes(draw_sizes: list[int], total: int) -> list[int]:
    out, left = [], total
    for n in draw_sizes:
        if left == 0:
            break
        n = min(n, left)
        out.append(n)
        left -= n
    if left:
        out.append(left)
    return out


def _movies(m):
    return {
        "residuals": cd.residuals(m),
        "raw - rcb": cd.raw(m) - cd.rcb(m),
        "rcm + rcb": cd.rcm(m) + cd.rcb(m),
        "2 raw - rcm(good)": 2 * cd.raw(m) - cd.rcm(m, "good"),
    }


@settings(max_examples=20, deadline=None)
@given(
    which=st.sampled_from(["residuals", "raw - rcb", "rcm + rcb", "2 raw - rcm(good)"]),
    corr=st.booleans(),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
)
def test_any_block_sizes_give_project_bit_for_bit(lowrank, which, corr, sizes):
    movie = _movies(lowrank)[which]
    kinds = [*STATS, "corr"] if corr else STATS
    cd.forget_statistics()
    ref = cd.project(movie, kinds)
    acc = cd.accumulate(movie, kinds)
    for n in _sizes(sizes, T):
        out = acc.send(n)
    assert acc.n == T
    for k in kinds:
        np.testing.assert_array_equal(out[k], ref[k], err_msg=f"{which} {k}")


def test_ring_background_and_residuals(ring):
    for movie in (cd.residuals(ring), cd.rcb(ring), cd.raw(ring) - cd.rcb(ring)):
        ref = cd.project(movie, STATS)
        acc = cd.accumulate(movie, STATS)
        for n in (5, 31, 1, 33):
            out = acc.send(n)
        for k in STATS:
            np.testing.assert_array_equal(out[k], ref[k])


def test_running_images_are_those_of_the_frames_so_far(lowrank):
    dense = dense_reference(lowrank, "residuals")
    acc = cd.accumulate(lowrank, STATS)  # a model: its residuals
    seen = 0
    for n in (3, 20, 9, 38):
        out = acc.send(n)
        seen += n
        part = dense[:seen]
        np.testing.assert_allclose(out["mean"], part.mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(out["std"], part.std(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(out["max"], part.max(0), rtol=1e-10, atol=1e-10)
    assert next(acc)["mean"].shape == lowrank.dims  # next(): the images, nothing folded


def test_online_run_whose_traces_grow(lowrank):
    """OnACID: the model knows the first 20 frames; frames and traces arrive afterwards."""
    m = lowrank
    Y, C, f = (np.asarray(x.compute()) for x in (m.Y, m.C, m.f))
    early = cd.from_arrays(m.A, C[:, :20], dims=m.dims, b=m.b.compute(), f=f[:, :20], Y=Y[:20])
    acc = cd.accumulate(cd.residuals(early), [*STATS, "corr"])
    acc.send(20)  # what the model has
    for t0, t1 in ((20, 33), (33, 34), (34, T)):
        out = acc.send({"Y": Y[t0:t1], "C": C[:, t0:t1], "f": f[:, t0:t1]})
    ref = cd.project(cd.residuals(m), [*STATS, "corr"])
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])


def test_block_forms(lowrank):
    m = lowrank
    Y, C, f = (np.asarray(x.compute()) for x in (m.Y, m.C, m.f))
    ref = cd.project(cd.residuals(m), STATS)
    acc = cd.accumulate(cd.residuals(m), STATS)
    acc.send(Y[:10])  # frames; traces from the model
    acc.send((Y[10:12], C[:, 10:12], f[:, 10:12]))
    acc.send(Y[12])  # one frame
    out = acc.send(T - 13)
    for k in STATS:
        np.testing.assert_array_equal(out[k], ref[k])


def test_factored_movies_keep_their_traces(lowrank):
    movie = cd.rcm(lowrank, "good") + cd.rcb(lowrank)
    ref = cd.project(movie, [*STATS, "corr"])
    acc = cd.accumulate(movie, [*STATS, "corr"])
    C, f = (np.asarray(x.compute()) for x in (lowrank.C, lowrank.f))
    acc.send({"C": C[:, :40], "f": f[:, :40]})
    out = acc.send(T - 40)
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])


def test_bad_blocks(lowrank):
    acc = cd.accumulate(cd.residuals(lowrank))
    with pytest.raises(cd.OptionError, match="no frames folded yet"):
        acc.result()
    with pytest.raises(cd.ShapeMismatchError, match=r"do not fit the model's dims"):
        acc.send(np.zeros((3, 5, 5)))
    with pytest.raises(cd.ShapeMismatchError, match="different frames"):
        acc.send({"Y": np.zeros((3, *lowrank.dims)), "C": np.zeros((lowrank.K, 4))})
    with pytest.raises(cd.OptionError, match=r"frames 0\.\.69 left"):
        acc.send(T + 1)
    acc.send(T)
    with pytest.raises(cd.OptionError, match="beyond the model's T=70"):
        acc.send(np.zeros((2, *lowrank.dims)))
    with pytest.raises(cd.OptionError, match="takes a caiman_dask movie or model"):
        cd.accumulate(np.zeros((3, 4, 4)))
    with pytest.raises(cd.OptionError, match="kind="):
        cd.accumulate(lowrank, ["median"])
