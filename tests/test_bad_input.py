"""Bad input and faults (issue 14): no silent wrong answer, no hang, no crash, no traceback.

The first part is a table of bad inputs, one parametrised case each: the call must raise an
error that is both a ``cd.CaimanDaskError`` and the matching builtin, and whose message holds
the key words (the argument, the value, what was expected). The second part has one fault test
per class of the issue: hangs, a crash (SIGBUS), silently wrong results, CLI tracebacks, vague
messages, store races, and options rejected only after the store exists. (Non-finite values are
tested in ``test_nonfinite.py``.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
import zarr

import caiman_dask as cd
from caiman_dask._store import _claim

# ------------------------------------------------------------------------------------------
# shared inputs: a small synthetic CNMF result in CaImAn's formats, written once
# ------------------------------------------------------------------------------------------

DIMS, T, K = (12, 10), 40, 4


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("syn")
    cd.synthetic(dims=DIMS, T=T, K=K, seed=3, path=d)
    return d


@pytest.fixture(scope="module")
def syn(syn_dir) -> cd.CNMFModel:
    return cd.open_cnmf(syn_dir / "synthetic.hdf5")


def _mmap_name(syn_dir: Path) -> Path:
    return next(syn_dir.glob("*.mmap"))


@dataclass
class Ctx:
    """What a case may use: the model, its files, a fresh tmp dir, small arrays."""

    model: cd.CNMFModel
    syn_dir: Path
    tmp: Path

    @property
    def A(self) -> np.ndarray:
        A = np.zeros((12, 2))
        A[0, 0] = A[5, 1] = 1.0
        return A

    C = np.ones((2, 7))
    Y = np.zeros((7, 3, 4), np.float32)

    def h5(self, edit: Callable[[h5py.File], None]) -> Path:
        """A copy of the synthetic CNMF file, edited."""
        dst = self.tmp / "edited.hdf5"
        shutil.copyfile(self.syn_dir / "synthetic.hdf5", dst)
        with h5py.File(dst, "r+") as f:
            edit(f)
        return dst

    def file(self, name: str, data: bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(data)
        return p

    def store(self) -> Path:
        return self.tmp / "out.zarr"


def _replace(f: h5py.File, key: str, value: Any) -> None:
    del f[key]
    f[key] = value


def _none(f: h5py.File, key: str) -> None:
    del f[key]
    f.create_dataset(key, data="NoneType", dtype=h5py.string_dtype())


def _indptr(f: h5py.File, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    _replace(f, "estimates/A/indptr", fn(f["estimates/A/indptr"][()]))


def _swap_middle(p: np.ndarray) -> np.ndarray:
    p = p.copy()
    p[1], p[2] = p[2] + 1, p[1]  # decreases after column 1
    return p


def _tiff_cut(ctx: Ctx) -> Path:
    p = ctx.tmp / "cut.tif"
    tifffile.imwrite(p, np.zeros((5, 8, 8), np.uint16))
    data = p.read_bytes()
    p.write_bytes(data[:8])
    return p


def _tiff_data_cut(ctx: Ctx) -> Path:
    p = ctx.tmp / "data_cut.tif"
    tifffile.imwrite(p, np.arange(5 * 8 * 8, dtype=np.uint16).reshape(5, 8, 8))
    p.write_bytes(p.read_bytes()[:-200])  # the last pages' data and IFDs are gone
    return p


def _h5_damaged(ctx: Ctx) -> Path:
    p = ctx.tmp / "damaged.h5"
    with h5py.File(p, "w") as f:
        data = np.random.default_rng(0).random((10, 8, 8))
        f.create_dataset("mov", data=data, chunks=(1, 8, 8), compression="gzip")
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 2, len(b) - 100):
        b[i] ^= 0xFF
    p.write_bytes(bytes(b))
    return p


def _incomplete_store(ctx: Ctx) -> Path:
    out = cd.to_zarr(ctx.model, ctx.store(), movies=["rcm"], projections=(), progress=False)
    meta = out / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["caiman_dask"]["complete"] = False  # as left by a kill mid-way
    meta.write_text(json.dumps(doc))
    return out


# (id, call, builtin, key words of the message, a store path that must not exist afterwards)
Case = tuple[str, Callable[[Ctx], Any], type[BaseException], list[str]]

SCHEDULER: list[Case] = [
    (
        "workers=-1",
        lambda c: cd.scheduler(workers=-1).__enter__(),
        ValueError,
        ["workers=-1", ">= 1"],
    ),
    ("workers=0", lambda c: cd.scheduler(workers=0).__enter__(), ValueError, ["workers=0", ">= 1"]),
    ("workers=1.5", lambda c: cd.scheduler(workers=1.5).__enter__(), ValueError, ["workers=1.5"]),
    (
        "workers=True",
        lambda c: cd.scheduler(workers=True).__enter__(),
        ValueError,
        ["workers=True"],
    ),
    ("workers='2'", lambda c: cd.scheduler(workers="2").__enter__(), ValueError, ["workers='2'"]),
    ("address=123", lambda c: cd.scheduler(123).__enter__(), ValueError, ["address=123", "tcp://"]),
    (
        "address+workers",
        lambda c: cd.scheduler("tcp://127.0.0.1:1", workers=2).__enter__(),
        ValueError,
        ["both"],
    ),
    (
        "timeout=0",
        lambda c: cd.scheduler("tcp://x:1", timeout=0).__enter__(),
        ValueError,
        ["timeout=0"],
    ),
]

MODEL: list[Case] = [
    (
        "A=None",
        lambda c: cd.from_arrays(None, c.C, dims=(3, 4)),
        ValueError,
        ["A=None", "footprints"],
    ),
    ("C=None", lambda c: cd.from_arrays(c.A, None, dims=(3, 4)), ValueError, ["C=None", "traces"]),
    (
        "dims=32.7",
        lambda c: cd.from_arrays(c.A, c.C, dims=(32.7, 40)),
        ValueError,
        ["dims=(32.7, 40)", "ints"],
    ),
    (
        "dims=3.0",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3.0, 4)),
        ValueError,
        ["3.0", "not truncated"],
    ),
    (
        "dims=str",
        lambda c: cd.from_arrays(c.A, c.C, dims="34"),
        ValueError,
        ["dims='34'", "sequence"],
    ),
    ("dims=1-D", lambda c: cd.from_arrays(c.A, c.C, dims=(12,)), ValueError, ["(d1, d2)", "(12,)"]),
    (
        "dims=0",
        lambda c: cd.from_arrays(c.A, c.C, dims=(0, 4)),
        ValueError,
        ["positive ints", "(0, 4)"],
    ),
    ("dims=neg", lambda c: cd.from_arrays(c.A, c.C, dims=(3, -4)), ValueError, ["positive ints"]),
    (
        "dims=bool",
        lambda c: cd.from_arrays(c.A, c.C, dims=(True, 12)),
        ValueError,
        ["True", "ints"],
    ),
    (
        "idx=floats",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), idx_components=[0.5, 1.7]),
        ValueError,
        ["idx_components", "float64", "integers"],
    ),
    (
        "idx_bad=floats",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), idx_components_bad=[1.0]),
        ValueError,
        ["idx_components_bad", "integers"],
    ),
    (
        "idx=bools",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), idx_components=[True, False]),
        ValueError,
        ["idx_components", "flatnonzero"],
    ),
    (
        "idx=out of range",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), idx_components=[0, 5]),
        ValueError,
        ["idx_components", "[5]", "0..1"],
    ),
    (
        "fr=-30",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), fr=-30),
        ValueError,
        ["fr=-30", "positive"],
    ),
    (
        "fr=0",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), fr=0),
        ValueError,
        ["fr=0", "positive"],
    ),
    (
        "fr=nan",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), fr=float("nan")),
        ValueError,
        ["fr=nan"],
    ),
    (
        "fr=inf",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), fr=float("inf")),
        ValueError,
        ["fr=inf"],
    ),
    (
        "fr=str",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), fr="30"),
        ValueError,
        ["fr='30'", "frames per second"],
    ),
    (
        "frame_chunk=0",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), Y=c.Y, frame_chunk=0),
        ValueError,
        ["frame_chunk=0", ">= 1"],
    ),
    (
        "frame_chunk=-2",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), Y=c.Y, frame_chunk=-2),
        ValueError,
        ["frame_chunk=-2"],
    ),
    (
        "frame_chunk=2.5",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), Y=c.Y, frame_chunk=2.5),
        ValueError,
        ["frame_chunk=2.5"],
    ),
    (
        "frame_chunk=True",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), frame_chunk=True),
        ValueError,
        ["frame_chunk=True"],
    ),
    (
        "C wrong shape",
        lambda c: cd.from_arrays(c.A, np.ones((3, 7)), dims=(3, 4)),
        ValueError,
        ["C has shape (3, 7)"],
    ),
    ("A 3-D", lambda c: cd.from_arrays(np.zeros((2, 2, 2)), c.C, dims=(3, 4)), ValueError, ["2-D"]),
    (
        "C strings",
        lambda c: cd.from_arrays(c.A, np.full((2, 7), "x"), dims=(3, 4)),
        ValueError,
        ["C must be numeric"],
    ),
    (
        "Y wrong T",
        lambda c: cd.from_arrays(c.A, c.C, dims=(3, 4), Y=np.zeros((9, 3, 4))),
        ValueError,
        ["9 frames", "T=7"],
    ),
]

MOVIES: list[Case] = [
    (
        "missing path",
        lambda c: cd.open_movie(c.tmp / "nope.mmap"),
        FileNotFoundError,
        ["nope.mmap", "does not exist"],
    ),
    (
        "suffix .avi",
        lambda c: cd.open_movie(c.file("m.avi", b"x")),
        ValueError,
        ["'.avi'", "supported"],
    ),
    (
        "empty tif",
        lambda c: cd.open_movie(c.file("e.tif", b"")),
        ValueError,
        ["e.tif", "TIFF", "empty"],
    ),
    ("truncated tif", lambda c: cd.open_movie(_tiff_cut(c)), ValueError, ["cut.tif", "truncated"]),
    (
        "not a tif",
        lambda c: cd.open_movie(c.file("n.tif", b"hello world" * 10)),
        ValueError,
        ["n.tif", "not a TIFF"],
    ),
    (
        "tif data cut",
        lambda c: cd.open_movie(_tiff_data_cut(c)),
        ValueError,
        ["data_cut.tif", "truncated"],
    ),
    (
        "h5 damaged data",
        lambda c: cd.open_movie(_h5_damaged(c)).read((9,)),
        ValueError,
        ["cannot read dataset 'mov'", "damaged"],
    ),
    (
        "h5 missing key",
        lambda c: cd.open_movie(c.syn_dir / "synthetic.hdf5", key="mov"),
        ValueError,
        ["no dataset 'mov'", "key="],
    ),
    (
        "h5 group key",
        lambda c: cd.open_movie(c.syn_dir / "synthetic.hdf5", key="estimates"),
        ValueError,
        ["'estimates'", "group"],
    ),
    (
        "h5 2-D key",
        lambda c: cd.open_movie(c.syn_dir / "synthetic.hdf5", key="estimates/C"),
        ValueError,
        ["estimates/C", "(T, d1, d2)"],
    ),
    (
        "not hdf5",
        lambda c: cd.open_movie(c.file("x.h5", b"not hdf5")),
        ValueError,
        ["x.h5", "HDF5"],
    ),
    (
        "memmap truncated",
        lambda c: cd.open_movie(c.file("m_d1_3_d2_3_d3_1_order_C_frames_5.mmap", b"\0" * 8)),
        ValueError,
        ["8 bytes", "truncated"],
    ),
    (
        "memmap no fields",
        lambda c: cd.open_movie(c.file("movie.mmap", b"\0" * 8)),
        ValueError,
        ["movie.mmap", "lacks"],
    ),
    (
        "npy truncated",
        lambda c: cd.open_movie(c.file("m.npy", b"\x93NUMPY")),
        ValueError,
        ["m.npy", "truncated"],
    ),
    (
        "key=5",
        lambda c: cd.open_movie(c.syn_dir / "synthetic.hdf5", key=5),
        ValueError,
        ["key=5", "string"],
    ),
    (
        "zarr no key",
        lambda c: cd.open_movie(_zarr_group(c), key="nope"),
        ValueError,
        ["key='nope'", "array"],
    ),
    (
        "store incomplete",
        lambda c: cd.open_movie(_incomplete_store(c), key="rcm/0"),
        ValueError,
        ["incomplete", "again"],
    ),
    ("object", lambda c: cd.open_movie(object()), ValueError, ["path or an array"]),
    (
        "open_movie frame_chunk=0",
        lambda c: cd.open_movie(c.Y, frame_chunk=0),
        ValueError,
        ["frame_chunk=0"],
    ),
]


def _store_with_bad_indptr(ctx: Ctx) -> Path:
    out = cd.to_zarr(ctx.model, ctx.store(), movies=["rcm"], projections=(), progress=False)
    arr = zarr.open_array(str(out / "factors" / "A" / "indptr"), mode="r+")
    arr[...] = _swap_middle(arr[...])
    return out


def _zarr_group(ctx: Ctx) -> Path:
    p = ctx.tmp / "g.zarr"
    zarr.create_group(str(p))
    return p


CNMF: list[Case] = [
    (
        "cnmf missing",
        lambda c: cd.open_cnmf(c.tmp / "nope.hdf5"),
        FileNotFoundError,
        ["nope.hdf5", "does not exist"],
    ),
    (
        "indptr decreases",
        lambda c: cd.open_cnmf(c.h5(lambda f: _indptr(f, _swap_middle))),
        ValueError,
        ["/estimates/A", "indptr decreases", "column(s) [1]"],
    ),
    (
        "indptr start",
        lambda c: cd.open_cnmf(c.h5(lambda f: _indptr(f, lambda p: p + 1))),
        ValueError,
        ["indptr runs from 1", "from 0"],
    ),
    (
        "indptr end",
        lambda c: cd.open_cnmf(c.h5(lambda f: _indptr(f, lambda p: np.r_[p[:-1], p[-1] - 1]))),
        ValueError,
        ["stored values"],
    ),
    (
        "indptr length",
        lambda c: cd.open_cnmf(c.h5(lambda f: _indptr(f, lambda p: p[:-1]))),
        ValueError,
        ["indptr has", "K + 1"],
    ),
    (
        "indptr floats",
        lambda c: cd.open_cnmf(c.h5(lambda f: _indptr(f, lambda p: p.astype(float)))),
        ValueError,
        ["indptr", "integers"],
    ),
    (
        "indices out of range",
        lambda c: cd.open_cnmf(
            c.h5(
                lambda f: _replace(f, "estimates/A/indices", f["estimates/A/indices"][()] + 10_000)
            )
        ),
        ValueError,
        ["row indices", "outside 0..119"],
    ),
    (
        "indices negative",
        lambda c: cd.open_cnmf(
            c.h5(lambda f: _replace(f, "estimates/A/indices", -1 - f["estimates/A/indices"][()]))
        ),
        ValueError,
        ["row indices", "outside"],
    ),
    (
        "indices length",
        lambda c: cd.open_cnmf(
            c.h5(lambda f: _replace(f, "estimates/A/indices", f["estimates/A/indices"][()][:-1]))
        ),
        ValueError,
        ["data", "indices", "one length"],
    ),
    (
        "A NoneType",
        lambda c: cd.open_cnmf(c.h5(lambda f: _none(f, "estimates/A"))),
        ValueError,
        ["/estimates/A", "missing"],
    ),
    (
        "C NoneType",
        lambda c: cd.open_cnmf(c.h5(lambda f: _none(f, "estimates/C"))),
        ValueError,
        ["/estimates/C", "missing"],
    ),
    (
        "not cnmf",
        lambda c: cd.open_cnmf(c.h5(lambda f: f.move("estimates", "other"))),
        ValueError,
        ["not a CaImAn cnmf.save() file"],
    ),
    (
        "dims 32.7 in file",
        lambda c: cd.open_cnmf(c.h5(lambda f: _replace(f, "estimates/dims", [32.7, 40.0]))),
        ValueError,
        ["/estimates/dims", "whole numbers"],
    ),
    (
        "idx 0.5 in file",
        lambda c: cd.open_cnmf(c.h5(lambda f: _replace(f, "estimates/idx_components", [0.5, 1.0]))),
        ValueError,
        ["idx_components", "whole numbers"],
    ),
    (
        "fr<0 in file",
        lambda c: cd.open_cnmf(c.h5(lambda f: _replace(f, "params/data/fr", -30.0))),
        ValueError,
        ["/params/data/fr", "frame rate"],
    ),
    (
        "open_cnmf dims",
        lambda c: cd.open_cnmf(c.syn_dir / "synthetic.hdf5", dims=(12.5, 10)),
        ValueError,
        ["12.5", "ints"],
    ),
    (
        "open_cnmf frame_chunk",
        lambda c: cd.open_cnmf(c.syn_dir / "synthetic.hdf5", frame_chunk=0),
        ValueError,
        ["frame_chunk=0"],
    ),
]

STORE: list[Case] = [
    (
        "chunk_frames=0",
        lambda c: cd.to_zarr(c.model, c.store(), chunk_frames=0),
        ValueError,
        ["chunk_frames=0", ">= 1"],
    ),
    (
        "chunk_frames=-3",
        lambda c: cd.to_zarr(c.model, c.store(), chunk_frames=-3),
        ValueError,
        ["chunk_frames=-3"],
    ),
    (
        "chunk_frames=2.5",
        lambda c: cd.to_zarr(c.model, c.store(), chunk_frames=2.5),
        ValueError,
        ["chunk_frames=2.5"],
    ),
    (
        "shard_frames=0",
        lambda c: cd.to_zarr(c.model, c.store(), shard_frames=0),
        ValueError,
        ["shard_frames=0"],
    ),
    (
        "shard not multiple",
        lambda c: cd.to_zarr(c.model, c.store(), chunk_frames=4, shard_frames=6),
        ValueError,
        ["shard_frames=6", "multiple", "chunk_frames=4"],
    ),
    (
        "shard on v2",
        lambda c: cd.to_zarr(c.model, c.store(), zarr_format=2, shard_frames=8),
        ValueError,
        ["zarr_format=3"],
    ),
    (
        "dtype=uint8",
        lambda c: cd.to_zarr(c.model, c.store(), dtype="uint8"),
        ValueError,
        ["'uint8'", "0..255", "ranges from"],
    ),
    (
        "dtype=int8",
        lambda c: cd.to_zarr(c.model, c.store(), dtype=np.int8),
        ValueError,
        ["'int8'", "-128..127"],
    ),
    (
        "dtype=bogus",
        lambda c: cd.to_zarr(c.model, c.store(), dtype="bogus"),
        ValueError,
        ["dtype='bogus'", "NumPy dtype"],
    ),
    (
        "dtype=complex",
        lambda c: cd.to_zarr(c.model, c.store(), dtype="complex64"),
        ValueError,
        ["complex64", "float dtype"],
    ),
    (
        "dtype=bool",
        lambda c: cd.to_zarr(c.model, c.store(), dtype=bool),
        ValueError,
        ["bool", "cannot store"],
    ),
    (
        "codec=gzip",
        lambda c: cd.to_zarr(c.model, c.store(), codec="gzip"),
        ValueError,
        ["codec='gzip'", "'zstd'"],
    ),
    (
        "zarr_format=4",
        lambda c: cd.to_zarr(c.model, c.store(), zarr_format=4),
        ValueError,
        ["zarr_format=4", "[2, 3]"],
    ),
    (
        "movies=raw",
        lambda c: cd.to_zarr(c.model, c.store(), movies=["raw"]),
        ValueError,
        ["movies='raw'", "'rcm'"],
    ),
    (
        "projections=median",
        lambda c: cd.to_zarr(c.model, c.store(), projections=["median"]),
        ValueError,
        ["'median'", "'mean'"],
    ),
    (
        "components=99",
        lambda c: cd.to_zarr(c.model, c.store(), components=[99]),
        ValueError,
        ["[99]", "out of range"],
    ),
    ("traces=X", lambda c: cd.to_zarr(c.model, c.store(), traces="X"), ValueError, ["traces='X'"]),
    (
        "path=None",
        lambda c: cd.to_zarr(c.model, None),
        ValueError,
        ["path=None", "store directory"],
    ),
    (
        "path is a file",
        lambda c: cd.to_zarr(c.model, c.syn_dir / "synthetic.hdf5"),
        ValueError,
        ["is a file", "another path"],
    ),
]

READ: list[Case] = [
    (
        "open_zarr missing",
        lambda c: cd.open_zarr(c.tmp / "nope.zarr"),
        FileNotFoundError,
        ["nope.zarr", "does not exist"],
    ),
    (
        "open_zarr not ours",
        lambda c: cd.open_zarr(_zarr_group(c)),
        ValueError,
        ["not one written by caiman_dask"],
    ),
    (
        "open_zarr incomplete",
        lambda c: cd.open_zarr(_incomplete_store(c)),
        ValueError,
        ["incomplete", "again"],
    ),
    (
        "open_zarr bad indptr",
        lambda c: cd.open_zarr(_store_with_bad_indptr(c)),
        ValueError,
        ["factors/A", "indptr decreases", "export it again"],
    ),
    ("rcm[T]", lambda c: cd.rcm(c.model)[T], IndexError, [f"index {T}", f"size {T}"]),
    ("res[-T-1]", lambda c: cd.residuals(c.model)[-T - 1], IndexError, [f"index {-T - 1}"]),
    ("raw[0, 99]", lambda c: cd.raw(c.model)[0, 99], IndexError, ["index 99", "axis 1"]),
    ("rcm['a']", lambda c: cd.rcm(c.model)["a"], IndexError, ["valid indices"]),
    ("rcm[None]", lambda c: cd.rcm(c.model)[None], IndexError, ["None", "not supported"]),
    ("rcm[4 axes]", lambda c: cd.rcm(c.model)[0, 0, 0, 0], IndexError, ["too many indices"]),
    (
        "components='foo'",
        lambda c: cd.rcm(c.model, "foo"),
        ValueError,
        ["components='foo'", "'good'"],
    ),
    (
        "project kind",
        lambda c: cd.project(cd.rcm(c.model), "median"),
        ValueError,
        ["kind='median'"],
    ),
]

SYNTHETIC: list[Case] = [
    (
        "synthetic T=10.5",
        lambda c: cd.synthetic(dims=(5, 5), T=10.5, K=2),
        ValueError,
        ["T=10.5", "int"],
    ),
    (
        "synthetic K=-1",
        lambda c: cd.synthetic(dims=(5, 5), T=10, K=-1),
        ValueError,
        ["K >= 0", "K=-1"],
    ),
    ("synthetic dims=5.5", lambda c: cd.synthetic(dims=(5.5, 5), T=10, K=2), ValueError, ["5.5"]),
    (
        "synthetic seed='x'",
        lambda c: cd.synthetic(dims=(5, 5), T=10, K=2, seed="x"),
        ValueError,
        ["seed='x'"],
    ),
    (
        "synthetic fr=-1",
        lambda c: cd.synthetic(dims=(5, 5), T=10, K=2, fr=-1),
        ValueError,
        ["fr=-1"],
    ),
    (
        "synthetic path file",
        lambda c: cd.synthetic(dims=(5, 5), T=10, K=2, path=c.file("f", b"")),
        ValueError,
        ["is a file", "directory"],
    ),
]

ALL = SCHEDULER + MODEL + MOVIES + CNMF + STORE + READ + SYNTHETIC


@pytest.mark.parametrize(
    ("call", "builtin", "words"), [c[1:] for c in ALL], ids=[c[0] for c in ALL]
)
def test_bad_input_is_a_clear_error(call, builtin, words, syn, syn_dir, tmp_path):
    ctx = Ctx(syn, syn_dir, tmp_path)
    with pytest.raises(cd.CaimanDaskError) as info:
        call(ctx)
    err = info.value
    assert isinstance(err, builtin), f"{type(err).__mro__} is not a {builtin.__name__}"
    msg = str(err)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    if call in {c[1] for c in STORE}:  # options are checked before anything is created
        assert not ctx.store().exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_table_is_large_enough():
    assert len(ALL) >= 60 and len({c[0] for c in ALL}) == len(ALL)


# ------------------------------------------------------------------------------------------
# hangs: every one ends, quickly, with a clear error (timeouts make a regression fail)
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "caiman_dask._cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode not in (0, None) and r.returncode > 0, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("workers", ["-2", "0"])
def test_no_hang_on_bad_worker_counts(syn_dir, tmp_path, workers):
    r = _cli(
        "export",
        str(syn_dir / "synthetic.hdf5"),
        "-o",
        str(tmp_path / "x.zarr"),
        "--workers",
        workers,
        timeout=60,
    )
    _one_line_error(r, "--workers", repr(workers), ">= 1")
    assert r.returncode == 2 and not (tmp_path / "x.zarr").exists()


def test_no_hang_on_a_scheduler_address_with_nothing_listening(syn_dir, tmp_path):
    addr = f"tcp://127.0.0.1:{_free_port()}"
    r = _cli(
        "export",
        str(syn_dir / "synthetic.hdf5"),
        "-o",
        str(tmp_path / "x.zarr"),
        "--scheduler",
        addr,
        "--connect-timeout",
        "1",
        timeout=60,
    )
    _one_line_error(r, "no dask scheduler answered", addr, "within 1 s")
    assert not (tmp_path / "x.zarr").exists()
    # the same from Python, in a child process so that a hang fails the test
    code = f"""
import caiman_dask as cd
try:
    with cd.scheduler({addr!r}, timeout=1):
        pass
except cd.SchedulerError as e:
    assert isinstance(e, ConnectionError)
    print("SchedulerError", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("SchedulerError"), out.stderr


# ------------------------------------------------------------------------------------------
# a crash: a memmap truncated (or replaced) under an open model is an error, never SIGBUS
# ------------------------------------------------------------------------------------------

_CRASH = """
import os, sys, numpy as np, caiman_dask as cd
model = cd.open_cnmf(sys.argv[1], movie=sys.argv[2])
frames = {"raw": cd.raw(model), "res": cd.residuals(model)}
for mv in frames.values():
    mv[0]                                   # the movie is open, its pages mapped
size = os.path.getsize(sys.argv[2])
if sys.argv[3] == "truncate":
    os.truncate(sys.argv[2], size // 8)
else:                                       # replaced by another file of the same size
    tmp = sys.argv[2] + ".new"
    np.ones(size // 4, np.float32).tofile(tmp)
    os.replace(tmp, sys.argv[2])
for name, read in [("raw[T-1]", lambda: frames["raw"][-1]), ("res[T-1]", lambda: frames["res"][-1]),
                   ("raw[a:b]", lambda: frames["raw"][5:30]),
                   ("data", lambda: frames["res"].data.compute())]:
    try:
        read()
        print(name, "NO ERROR")
    except cd.FileChangedError as e:
        assert isinstance(e, OSError) and isinstance(e, cd.CaimanDaskError)
        print(name, "FileChangedError", e)
"""


@pytest.mark.parametrize("how", ["truncate", "replace"])
@pytest.mark.parametrize("order", ["F", "C"])
def test_a_changed_memmap_is_an_error_not_sigbus(syn_dir, tmp_path, how, order, request):
    if order == "F":
        h5 = shutil.copy(syn_dir / "synthetic.hdf5", tmp_path)
        mm = shutil.copy(_mmap_name(syn_dir), tmp_path)
    else:  # CNMF's own pixel-major memmap, from CaImAn
        caiman_dir = request.getfixturevalue("caiman_dir")
        h5 = shutil.copy(caiman_dir / "cnmf_2p.hdf5", tmp_path)
        mm = shutil.copy(caiman_dir / "memmap_d1_60_d2_80_d3_1_order_C_frames_400.mmap", tmp_path)
    r = subprocess.run(
        [sys.executable, "-c", _CRASH, str(h5), str(mm), how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"exit {r.returncode} (-7 is SIGBUS): {r.stderr[-2000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and all(" FileChangedError " in ln for ln in lines), r.stdout
    assert "changed after it was opened" in lines[0] and Path(mm).name in lines[0]
    assert ("size changed" if how == "truncate" else "replaced") in lines[0]


def test_a_changed_numpy_memmap_is_an_error(tmp_path):
    p = tmp_path / "m.npy"
    np.save(p, np.arange(10 * 6 * 5, dtype=np.float32).reshape(10, 6, 5))
    mv = cd.raw(cd.from_arrays(np.eye(30, 2), np.ones((2, 10)), dims=(6, 5), Y=p))
    np.testing.assert_array_equal(mv[9], np.arange(270, 300, dtype=np.float32).reshape(6, 5))
    os.truncate(p, 200)
    with pytest.raises(cd.FileChangedError, match="size changed"):
        mv[9]
    with pytest.raises(cd.FileChangedError):
        mv.data.compute()


def test_an_hdf5_replaced_after_open_cnmf_is_an_error(syn_dir, tmp_path):
    h5 = Path(shutil.copy(syn_dir / "synthetic.hdf5", tmp_path))
    mm = shutil.copy(_mmap_name(syn_dir), tmp_path)
    model = cd.open_cnmf(h5, movie=mm)
    other = tmp_path / "other"
    cd.synthetic(dims=DIMS, T=T, K=K, seed=4, path=other)  # another result, same shapes
    os.replace(other / "synthetic.hdf5", h5)
    with pytest.raises(cd.FileChangedError, match=r"synthetic\.hdf5.*changed after it was opened"):
        cd.rcm(model)[0]
    with pytest.raises(cd.FileChangedError):
        model.C.compute()


def test_a_deleted_movie_is_a_missing_file_error(syn_dir, tmp_path):
    mm = Path(shutil.copy(_mmap_name(syn_dir), tmp_path))
    mv = cd.open_movie(mm)
    mm.unlink()
    with pytest.raises(cd.MissingFileError, match="deleted or moved"):
        mv.read((0,))


# ------------------------------------------------------------------------------------------
# silently wrong: now refused, or exact
# ------------------------------------------------------------------------------------------


def test_decreasing_indptr_is_refused_not_wrong_frames(syn_dir, tmp_path):
    ctx = Ctx(cd.open_cnmf(syn_dir / "synthetic.hdf5"), syn_dir, tmp_path)
    with pytest.raises(cd.FileFormatError, match="indptr decreases"):
        cd.open_cnmf(ctx.h5(lambda f: _indptr(f, _swap_middle)))
    # a valid file opens and its frames equal a dense float64 reference built with h5py
    with h5py.File(syn_dir / "synthetic.hdf5", "r") as f:
        g = f["estimates/A"]
        A = np.zeros(tuple(g["shape"][()]))
        ip, ix, d = g["indptr"][()], g["indices"][()], g["data"][()]
        for k in range(A.shape[1]):
            A[ix[ip[k] : ip[k + 1]], k] = d[ip[k] : ip[k + 1]]
        C = f["estimates/C"][()].astype(np.float64)
    ref = (A @ C[:, 7]).reshape(DIMS, order="F")
    np.testing.assert_allclose(cd.rcm(ctx.model, dtype=np.float64)[7], ref, rtol=1e-6, atol=1e-6)


def test_integer_export_dtype_checks_the_range_and_is_exact_when_it_fits(syn, tmp_path):
    mv = cd.rcm(syn, dtype=np.float64)
    with pytest.raises(cd.OptionError, match="ranges from"):
        cd.to_zarr(syn, tmp_path / "u8.zarr", movies=["rcm"], dtype="uint8", progress=False)
    assert not (tmp_path / "u8.zarr").exists()
    out = cd.to_zarr(
        syn, tmp_path / "i32.zarr", movies=["rcm"], dtype="int32", projections=(), progress=False
    )
    stored = zarr.open_array(str(out / "rcm" / "0"), mode="r")[...]
    assert stored.dtype == np.int32
    np.testing.assert_array_equal(stored, np.trunc(mv[...]).astype(np.int32))


def test_fr_and_dims_are_never_truncated_or_negative(tmp_path):
    A = np.eye(12, 2)
    with pytest.raises(cd.OptionError, match="fr=-30"):
        cd.from_arrays(A, np.ones((2, 5)), dims=(3, 4), fr=-30)
    m = cd.from_arrays(A, np.ones((2, 5)), dims=(3, 4), fr=30)
    out = cd.to_zarr(m, tmp_path / "s.zarr", projections=(), progress=False)
    scale = zarr.open_group(str(out / "rcm"), mode="r").attrs["ome"]["multiscales"][0]["datasets"][
        0
    ]
    assert scale["coordinateTransformations"][0]["scale"][0] == pytest.approx(1 / 30)


def test_open_movie_refuses_an_export_killed_mid_way(syn, tmp_path):
    ctx = Ctx(syn, tmp_path, tmp_path)
    store = _incomplete_store(ctx)
    for key in ("rcm/0", None):
        with pytest.raises(cd.StoreError, match="incomplete"):
            cd.open_movie(store / "rcm" if key is None else store, key="0" if key is None else key)
    with pytest.raises(cd.StoreError, match="incomplete"):
        cd.open_zarr(store)
    cd.to_zarr(syn, store, movies=["rcm"], projections=(), progress=False)  # finishes it
    assert cd.open_movie(store, key="rcm/0").shape == (T, *DIMS)


# ------------------------------------------------------------------------------------------
# CLI: one line on stderr, a non-zero exit code, never a traceback; --debug shows it
# ------------------------------------------------------------------------------------------


def _readonly_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write into (root writes anywhere a mode allows)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/sys")  # sysfs refuses new files even to root (Linux)
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def test_cli_failures_are_one_line(syn_dir, tmp_path, capsys):
    h5 = str(syn_dir / "synthetic.hdf5")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.tif").write_bytes(b"")
    ro = _readonly_dir(tmp_path)
    cases = [
        (
            ["export", h5, "-o", str(tmp_path / "a.zarr"), "--chunk-frames", "-3"],
            2,
            ["--chunk-frames", "'-3'"],
        ),
        (
            ["export", h5, "-o", str(tmp_path / "a.zarr"), "--shard-frames", "x"],
            2,
            ["--shard-frames", "'x'"],
        ),
        (["demo", str(tmp_path / "afile")], 2, ["OUT_DIR", "is a file"]),
        (["demo", str(tmp_path / "d"), "--dims", "0", "5"], 2, ["--dims", "'0'"]),
        (["info", str(tmp_path / "empty.tif")], 2, ["empty.tif", "TIFF"]),
        (["info", str(tmp_path / "missing.hdf5")], 2, ["missing.hdf5", "does not exist"]),
        (
            ["export", h5, "-o", str(ro / "x.zarr"), "--quiet"],
            2,
            ["cannot write the store", "not writable"],
        ),
        (["export", h5, "-o", str(tmp_path / "a.zarr"), "--dtype", "int8"], 2, ["--dtype", "int8"]),
        (
            ["export", h5, "-o", str(tmp_path / "a.zarr"), "--components", "1,x"],
            2,
            ["--components", "'1,x'"],
        ),
        (["frobnicate"], 2, ["invalid choice"]),
    ]
    from caiman_dask._cli import main

    for args, code, words in cases:
        try:
            got = main(args)
        except SystemExit as e:  # (argparse's usage errors)
            got = e.code
        err = capsys.readouterr().err
        _one_line_error(subprocess.CompletedProcess(args, got, "", err), *words)
        assert got == code, (args, got, err)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "d").exists()
    # and through the installed entry point, in a process of its own
    for args, code, words in (cases[0], cases[6]):
        r = _cli(*args)
        _one_line_error(r, *words)
        assert r.returncode == code


def test_cli_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    r = _cli("info", str(tmp_path / "empty.tif"), "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileFormatError" in r.stderr
    r = _cli("--debug", "info", str(tmp_path / "empty.tif"))
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_cli_unexpected_errors_are_one_line_too(monkeypatch, capsys, tmp_path):
    from caiman_dask import _cli

    def boom(args: Any) -> int:
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(_cli, "_info", boom)
    assert _cli.main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "caiman-dask info: error: RuntimeError: something unexpected (run again with --debug for "
        "the traceback)"
    ]


# ------------------------------------------------------------------------------------------
# vague: clear messages for a full disk and a read-only place
# ------------------------------------------------------------------------------------------

_FULL_DISK = """
import resource, signal, sys, caiman_dask as cd
model = cd.open_cnmf(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
try:
    cd.to_zarr(model, sys.argv[2], codec="none", projections=(), progress=False)
except cd.StoreWriteError as e:
    assert isinstance(e, OSError)
    print("StoreWriteError", e)
"""


def test_a_full_disk_is_a_clear_error_and_the_store_stays_incomplete(syn_dir, tmp_path):
    store = tmp_path / "full.zarr"
    r = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(syn_dir / "synthetic.hdf5"), str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("StoreWriteError cannot write the store"), r.stdout
    assert "disk is full" in r.stdout and "resumes" in r.stdout
    assert cd.store_info(store)["complete"] is False
    with pytest.raises(cd.StoreError, match="incomplete"):
        cd.open_zarr(store)
    assert [p.name for p in tmp_path.iterdir()] == ["full.zarr"]  # no lock, no hidden dirs
    # with space again, the same export resumes and completes
    out = cd.to_zarr(
        cd.open_cnmf(syn_dir / "synthetic.hdf5"),
        store,
        codec="none",
        projections=(),
        progress=False,
    )
    assert cd.store_info(out)["complete"] is True


def test_a_read_only_place_is_a_clear_error(syn, tmp_path):
    ro = _readonly_dir(tmp_path)
    with pytest.raises(cd.StoreWriteError, match="not writable") as info:
        cd.to_zarr(syn, ro / "x.zarr", progress=False)
    assert isinstance(info.value, OSError)
    assert not (ro / "x.zarr").exists()


# ------------------------------------------------------------------------------------------
# store races: one store, a clear error for the other export, nothing hidden left behind
# ------------------------------------------------------------------------------------------


def test_an_export_to_a_claimed_path_is_refused_at_once(syn_dir, tmp_path):
    store = tmp_path / "r.zarr"
    with _claim(store):  # as a running export holds it
        r = _cli("export", str(syn_dir / "synthetic.hdf5"), "-o", str(store), "--quiet", timeout=60)
        _one_line_error(r, "another caiman_dask export to", str(store), f"pid {os.getpid()}")
        assert not store.exists()
    assert list(tmp_path.iterdir()) == []  # the claim is gone with its holder


def test_two_exports_started_at_once_give_one_store(tmp_path):
    d = tmp_path / "in"
    cd.synthetic(dims=(64, 64), T=600, K=20, seed=0, path=d)
    store = tmp_path / "r.zarr"
    cmd = [
        sys.executable,
        "-m",
        "caiman_dask._cli",
        "export",
        str(d / "synthetic.hdf5"),
        "-o",
        str(store),
        "--quiet",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for p in procs:
        with p:
            _, err = p.communicate(timeout=300)
            results.append((p.returncode, err))
    for code, err in results:
        assert code == 0 or (code == 2 and "another caiman_dask export to" in err), (code, err)
        assert "Traceback" not in err and "Directory not empty" not in err
    assert any(code == 0 for code, _ in results)
    assert cd.store_info(store)["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "r.zarr"]  # nothing hidden
    ref = cd.rcm(cd.open_cnmf(d / "synthetic.hdf5"))
    stored = zarr.open_array(str(store / "rcm" / "0"), mode="r")
    np.testing.assert_array_equal(stored[50], ref[50])


# ------------------------------------------------------------------------------------------
# options rejected before the store exists: the retry with a fixed option works
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"chunk_frames": 0},
        {"dtype": "uint8"},
        {"shard_frames": 7, "chunk_frames": 4},
        {"codec": "gz"},
    ],
    ids=["chunk_frames", "dtype", "shard_frames", "codec"],
)
def test_retry_after_a_rejected_option_is_not_refused(syn, tmp_path, bad):
    store = tmp_path / "x.zarr"
    with pytest.raises(cd.OptionError):
        cd.to_zarr(syn, store, progress=False, **bad)
    assert not store.exists() and list(tmp_path.iterdir()) == []
    out = cd.to_zarr(syn, store, movies=["rcm"], progress=False, chunk_frames=8)
    assert cd.store_info(out)["complete"] is True


def test_every_error_class_is_a_caiman_dask_error_and_a_builtin():
    import inspect

    import caiman_dask.errors as errors

    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, Exception) and not issubclass(c, Warning)
    ]
    assert len(classes) >= 17
    for c in classes:
        assert issubclass(c, cd.CaimanDaskError), c
        if c is not cd.CaimanDaskError:
            builtins = [
                b
                for b in c.__mro__
                if b.__module__ == "builtins" and b not in (Exception, BaseException, object)
            ]
            assert builtins, f"{c.__name__} derives from no builtin exception"
