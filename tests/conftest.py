"""Shared test fixtures: the CaImAn fixture folder, seeded RNGs, small synthetic models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "caiman"


def fixtures_dir() -> Path | None:
    p = Path(os.environ.get("CAIMAN_DASK_FIXTURES", _DEFAULT))
    return p if (p / "cnmf_2p.hdf5").exists() else None


@pytest.fixture(scope="session")
def caiman_dir() -> Path:
    """The read-only CaImAn fixture folder; skipped (or an error in CI) when absent."""
    p = fixtures_dir()
    if p is None:
        if os.environ.get("CAIMAN_DASK_REQUIRE_FIXTURES"):
            pytest.fail("CaImAn fixtures are required (CAIMAN_DASK_REQUIRE_FIXTURES) but missing")
        pytest.skip("CaImAn fixtures not found: set CAIMAN_DASK_FIXTURES or place ../shared")
    return p


MMAP_2P_C = "memmap_d1_60_d2_80_d3_1_order_C_frames_400.mmap"
MMAP_2P_F = "mov_2p_rig__d1_60_d2_80_d3_1_order_F_frames_400.mmap"
MMAP_1P_C = "memmap_d1_48_d2_64_d3_1_order_C_frames_400.mmap"


@pytest.fixture(scope="session")
def refs_2p(caiman_dir: Path) -> dict[str, np.ndarray]:
    with np.load(caiman_dir / "refs_2p.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def refs_1p(caiman_dir: Path) -> dict[str, np.ndarray]:
    with np.load(caiman_dir / "refs_1p.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def model_2p(caiman_dir: Path):
    import caiman_dask as cd

    return cd.open_cnmf(caiman_dir / "cnmf_2p.hdf5", movie=caiman_dir / MMAP_2P_C)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def copy_fixture(caiman_dir: Path, tmp_path: Path):
    """Copy a fixture into tmp_path (for tests that modify or truncate files)."""

    def _copy(name: str, new_name: str | None = None) -> Path:
        dst = tmp_path / (new_name or name)
        shutil.copyfile(caiman_dir / name, dst)
        dst.chmod(0o644)
        return dst

    return _copy
