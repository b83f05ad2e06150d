"""Other languages: JavaScript (zarrita) reads an exported store and rebuilds frames from A, C.

``tests/js/read_store.mjs`` opens the store with zarrita (npm; ``package.json`` and
``package-lock.json`` at the repository root, installed by ``npm ci``), reads stored movie frames,
the CSC factor ``A`` (Fortran pixel order) and the traces, rebuilds the frames in plain
JavaScript and prints JSON; here we compare those numbers with Python's.

Skipped when ``node`` or ``node_modules/zarrita`` is missing, unless
``CAIMAN_DASK_REQUIRE_NODE=1`` (CI), where that is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

import caiman_dask as cd
from caiman_dask.testing import assert_close_scaled, dense_reference

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "js" / "read_store.mjs"


def _unavailable(reason: str) -> None:
    if os.environ.get("CAIMAN_DASK_REQUIRE_NODE") == "1":
        pytest.fail(
            f"the JavaScript interop test is required (CAIMAN_DASK_REQUIRE_NODE=1): {reason}"
        )
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        _unavailable("node is not on PATH")
    if not (REPO / "node_modules" / "zarrita" / "package.json").exists():
        _unavailable(f"node_modules/zarrita is missing: run `npm ci` in {REPO}")
    return exe


def read_with_js(node: str, store: Path, movie: str, frames: list[int]) -> dict:
    proc = subprocess.run(
        [node, str(SCRIPT), str(store), movie, ",".join(map(str, frames))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"read_store.mjs failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("dims", "T", "K", "seed", "frames", "axes", "export"),
    [
        ((20, 24), 30, 6, 3, [0, 7, 29], ["t", "y", "x"], {}),
        ((8, 9, 5), 12, 3, 2, [0, 5, 11], ["t", "z", "y", "x"], {}),
        # zarr v2 + Blosc-LZ4, a component selection, other traces, v3 shards
        ((20, 24), 30, 6, 3, [0, 7, 29], ["t", "y", "x"], {"zarr_format": 2, "codec": "lz4"}),
        ((20, 24), 30, 6, 3, [1, 7, 29], ["t", "y", "x"], {"components": "good"}),
        ((20, 24), 30, 6, 3, [0, 8, 29], ["t", "y", "x"], {"traces": "S"}),
        ((20, 24), 30, 6, 3, [0, 9, 29], ["t", "y", "x"], {"chunk_frames": 4, "shard_frames": 8}),
    ],
    ids=["2d", "3d", "v2-lz4", "good", "traces-S", "shards"],
)
def test_js_reads_store_and_rebuilds_frames(node, tmp_path, dims, T, K, seed, frames, axes, export):
    model = cd.synthetic(dims=dims, T=T, K=K, seed=seed)
    store = cd.to_zarr(model, tmp_path / "js.zarr", movies=("rcm",), progress=False, **export)
    out = read_with_js(node, store, "rcm", frames)

    assert out["dims"] == list(dims) and out["factor_dims"] == list(dims)
    assert out["T"] == T and out["K"] == K and out["frames"] == frames
    assert out["axes"] == axes
    components = export.get("components", "all")
    traces = export.get("traces", "C")
    assert out["components"] == model.components(components).tolist()
    assert out["traces"] == traces

    stored = np.asarray(out["frames_stored"], dtype=np.float64)
    rebuilt = np.asarray(out["frames_rebuilt"], dtype=np.float64)
    assert stored.shape == rebuilt.shape == (len(frames), *dims)

    # zarrita decodes exactly the bytes zarr-python wrote (JSON carries doubles exactly)
    np.testing.assert_array_equal(
        stored, zarr.open_array(str(store / "rcm" / "0"), mode="r")[frames]
    )
    expected = cd.rcm(model, components, traces=traces)[frames]
    np.testing.assert_allclose(stored, expected, rtol=1e-12)
    # the JavaScript rebuild from the CSC factors agrees with Python's movie and a brute-force
    # dense reference (Fortran pixel order, CaImAn's convention)
    assert_close_scaled(rebuilt, expected, rtol=1e-10)
    dense = dense_reference(model, "rcm", components, np.asarray(getattr(model, traces)))
    assert_close_scaled(rebuilt, dense[frames], rtol=1e-10)
    assert out["max_abs_diff_js"] <= 1e-10 * np.abs(expected).max()
