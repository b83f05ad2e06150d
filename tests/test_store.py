"""Zarr persistence: layout, OME-Zarr validity, round trips, resumability, refusal rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import caiman_dask as cd
from caiman_dask.testing import assert_close_scaled, assert_stores_identical


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return cd.synthetic(dims=(24, 20), T=90, K=7, seed=11, path=tmp_path_factory.mktemp("syn"))


@pytest.mark.parametrize(("zarr_format", "codec"), [(3, "zstd"), (2, "lz4"), (3, "none")])
def test_round_trip_and_ome_metadata(syn, tmp_path, zarr_format, codec):
    from ome_zarr_models import open_ome_zarr

    out = cd.to_zarr(
        syn,
        tmp_path / "r.zarr",
        zarr_format=zarr_format,
        codec=codec,
        chunk_frames=16,
        progress=False,
    )
    root = zarr.open_group(str(out), mode="r")
    info = root.attrs["caiman_dask"]
    assert info["complete"] is True and info["dims"] == [24, 20] and info["T"] == 90
    assert {f["role"] for f in info["source_files"]} == {"cnmf", "movie"}
    for name, fn in (("rcm", cd.rcm), ("rcb", cd.rcb), ("residuals", cd.residuals)):
        img = open_ome_zarr(out / name)  # validates against the OME-Zarr spec (0.5 / 0.4)
        assert type(img).__module__.startswith(
            "ome_zarr_models.v05" if zarr_format == 3 else "ome_zarr_models.v04"
        )
        arr = root[f"{name}/0"]
        assert arr.shape == (90, 24, 20) and arr.chunks == (16, 24, 20)
        if zarr_format == 3:
            assert arr.metadata.dimension_names == ("t", "y", "x")
        assert_close_scaled(arr[...], fn(syn)[...], rtol=1e-14)
        for kind in ("mean", "std", "min", "max", "corr"):
            open_ome_zarr(out / "projections" / name / kind)
            # the export accumulates residual statistics over its own chunks: same numbers
            # up to the merge order's rounding
            assert_close_scaled(
                root[f"projections/{name}/{kind}/0"][...], cd.project(fn(syn), kind), rtol=1e-12
            )
    back = cd.open_zarr(out)
    assert back.dims == syn.dims and back.K == syn.K and back.T == syn.T
    np.testing.assert_array_equal(back.idx_components, syn.idx_components)
    for fn in (cd.rcm, cd.rcb, cd.residuals):
        assert_close_scaled(fn(back)[...], fn(syn)[...], rtol=1e-14)
    assert "rcm/0" in cd.describe_store(out)


def test_3d_layout(tmp_path):
    m = cd.synthetic(dims=(8, 9, 5), T=12, K=3, seed=2)
    out = cd.to_zarr(m, tmp_path / "v.zarr", movies=("rcm",), progress=False)
    root = zarr.open_group(str(out), mode="r")
    assert root["rcm/0"].metadata.dimension_names == ("t", "z", "y", "x")
    axes = root["rcm"].attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["t", "z", "y", "x"]
    np.testing.assert_allclose(root["rcm/0"][...], cd.rcm(m)[...])


def test_shards_are_aligned_and_exact(syn, tmp_path):
    out = cd.to_zarr(
        syn,
        tmp_path / "s.zarr",
        chunk_frames=4,
        shard_frames=12,
        movies=("residuals",),
        projections=(),
        progress=False,
    )
    arr = zarr.open_array(str(out / "residuals" / "0"), mode="r")
    assert arr.shards == (12, 24, 20) and arr.chunks == (4, 24, 20)
    # every frame, including the ragged last shard (90 = 7*12 + 6), is exact
    assert_close_scaled(arr[...], cd.residuals(syn)[...], rtol=1e-14)
    with pytest.raises(cd.OptionError, match="multiple of chunk_frames"):
        cd.to_zarr(syn, tmp_path / "bad.zarr", chunk_frames=4, shard_frames=10)
    with pytest.raises(cd.OptionError, match="zarr_format=3"):
        cd.to_zarr(syn, tmp_path / "bad.zarr", zarr_format=2, shard_frames=8)


def test_existing_paths(syn, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(cd.StoreError, match="not written by caiman_dask"):
            cd.to_zarr(syn, foreign, overwrite=overwrite, progress=False)
    assert (foreign / "notes.txt").read_text() == "precious"
    out = cd.to_zarr(syn, tmp_path / "a.zarr", movies=("rcm",), progress=False)
    mtime = (out / "zarr.json").stat().st_mtime_ns
    cd.to_zarr(syn, out, movies=("rcm",), progress=False)  # same export, complete: no-op
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    with pytest.raises(cd.StoreError, match=r"other parameters.*overwrite=True"):
        cd.to_zarr(syn, out, movies=("rcb",), progress=False)
    cd.to_zarr(syn, out, movies=("rcb",), overwrite=True, progress=False)
    assert not (out / "rcm").exists() and (out / "rcb").exists()


def test_bad_options(syn, tmp_path):
    with pytest.raises(
        cd.OptionError, match=r"codec='gzip' is not one of \['zstd', 'lz4', 'none'\]"
    ):
        cd.to_zarr(syn, tmp_path / "x.zarr", codec="gzip")
    with pytest.raises(cd.OptionError, match="'movie' is not one of"):
        cd.to_zarr(syn, tmp_path / "x.zarr", movies=("movie",))
    no_y = cd.open_cnmf(syn.files["cnmf"], movie=None)
    no_y = cd.from_arrays(syn.A, syn.C, dims=syn.dims, b=syn.b, f=syn.f)
    with pytest.raises(cd.OptionError, match="no movie Y"):
        cd.to_zarr(no_y, tmp_path / "x.zarr", movies=("residuals",))
    with pytest.raises(
        cd.OptionError,
        match=r"projections='median' is not one of \['mean', 'std', 'min', 'max', 'corr'\]",
    ):
        cd.to_zarr(syn, tmp_path / "x.zarr", projections=("median",))
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("codec", "gzip", "['zstd', 'lz4', 'none']"),
        ("zarr_format", 4, "[2, 3]"),
        ("zarr_format", "3", "[2, 3]"),
        ("movies", ("rcm", "raw"), "['rcm', 'rcb', 'residuals']"),
        ("projections", ("mean", "median"), "['mean', 'std', 'min', 'max', 'corr']"),
    ],
)
def test_every_rejected_option_names_the_valid_values(syn, tmp_path, option, value, valid):
    with pytest.raises(cd.OptionError) as exc:
        cd.to_zarr(syn, tmp_path / "x.zarr", progress=False, **{option: value})
    msg = str(exc.value)
    assert msg.startswith(f"{option}=") and f"is not one of {valid}" in msg
    assert isinstance(exc.value, cd.CaimanDaskError) and isinstance(exc.value, ValueError)
    assert not (tmp_path / "x.zarr").exists()


def test_unavailable_movie_and_v2_shards_say_how_to_fix(syn, tmp_path):
    bare = cd.from_arrays(syn.A, syn.C, dims=syn.dims)
    with pytest.raises(cd.OptionError, match=r"no background; it can write \['rcm'\]"):
        cd.to_zarr(bare, tmp_path / "x.zarr", movies=("rcb",))
    with pytest.raises(cd.OptionError, match=r"shard_frames=8 needs zarr_format=3.*drop"):
        cd.to_zarr(syn, tmp_path / "x.zarr", zarr_format=2, shard_frames=8)


def test_store_errors_are_caiman_dask_value_errors(syn, tmp_path):
    assert issubclass(cd.StoreError, cd.CaimanDaskError) and issubclass(cd.StoreError, ValueError)
    assert cd.StoreError is cd.errors.StoreError
    out = cd.to_zarr(syn, tmp_path / "f.zarr", movies=("rcm",), projections=(), factors=False)
    with pytest.raises(cd.StoreError, match=r"no factors/ group \(exported with factors=False\)"):
        cd.open_zarr(out)
    plain = tmp_path / "plain.zarr"
    zarr.create_group(str(plain))
    with pytest.raises(cd.StoreError, match="not one written by caiman_dask"):
        cd.store_info(plain)


EXPORT_SCRIPT = """
import sys, caiman_dask as cd, dask
dask.config.set(scheduler="sync")
m = cd.open_cnmf(sys.argv[1])
cd.to_zarr(m, sys.argv[2], chunk_frames=2, progress=False)
"""


@pytest.mark.parametrize("wait_markers", [5, 60])
def test_killed_export_resumes_byte_identical(syn, tmp_path, wait_markers):
    clean = cd.to_zarr(syn, tmp_path / "clean.zarr", chunk_frames=2, progress=False)
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SCRIPT, str(syn.files["cnmf"]), str(killed)]
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            markers = list((killed / "_progress").rglob("c/*")) if killed.exists() else []
            if len(markers) >= wait_markers:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the export finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert (killed / "_progress").exists()
    with pytest.raises(cd.StoreError, match="incomplete"):
        cd.open_zarr(killed)
    assert cd.store_info(killed)["complete"] is False
    cd.to_zarr(cd.open_cnmf(syn.files["cnmf"]), killed, chunk_frames=2, progress=False)
    assert_stores_identical(clean, killed)
    assert cd.store_info(killed)["complete"] is True


def test_resumed_export_drops_chunk_writes_cut_short(syn, tmp_path, monkeypatch):
    # zarr writes each chunk to "<chunk>.<uuid4 hex>.partial" and then renames it; a kill in
    # between leaves that file behind. The resumed export rewrites the chunk and must not keep
    # the leftover: a complete store holds exactly the files of a fresh one.
    import uuid

    import dask

    import caiman_dask._store as store

    clean = cd.to_zarr(syn, tmp_path / "clean.zarr", chunk_frames=2, progress=False)
    out = tmp_path / "out.zarr"
    leftover = out / "residuals" / "0" / "c" / "3" / "0" / f"0.{uuid.uuid4().hex}.partial"
    real, writes = store._MarkedTarget.__setitem__, []

    def killed_midway(self, key, value):
        writes.append(key)
        if len(writes) == 30:  # what a kill in the middle of this write leaves
            leftover.parent.mkdir(parents=True, exist_ok=True)
            leftover.write_bytes(b"cut short")
            raise KeyboardInterrupt
        real(self, key, value)

    monkeypatch.setattr(store._MarkedTarget, "__setitem__", killed_midway)
    with dask.config.set(scheduler="sync"), pytest.raises(KeyboardInterrupt):
        cd.to_zarr(syn, out, chunk_frames=2, progress=False)
    monkeypatch.undo()
    assert leftover.exists() and cd.store_info(out)["complete"] is False
    cd.to_zarr(syn, out, chunk_frames=2, progress=False)
    assert not leftover.exists()
    assert_stores_identical(clean, out)


def test_memory_is_bounded_independently_of_T(tmp_path):
    """Peak RSS of an export in a fresh process grows far less than the movie size."""
    script = """
import resource, sys, caiman_dask as cd
m = cd.synthetic(dims=(128, 128), T=int(sys.argv[1]), K=30, seed=0, path=sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cd.to_zarr(m, sys.argv[2] + "/out.zarr", movies=("residuals",), projections=(), progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""
    growth = {}
    for T in (500, 4000):
        r = subprocess.run(
            [sys.executable, "-c", script, str(T), str(tmp_path / f"T{T}")],
            capture_output=True,
            text=True,
            check=True,
        )
        growth[T] = int(r.stdout.split()[-1]) / 1024  # MiB
    movie_mib = 4000 * 128 * 128 * 8 / 2**20  # 500 MiB of float64 residuals
    # 8x more frames: the peak grows by far less than one extra chunk per frame would need
    assert growth[4000] < growth[500] + 100, growth
    assert growth[4000] < 0.75 * movie_mib, growth
