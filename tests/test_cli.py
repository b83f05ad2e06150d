"""The caiman-dask command and the README's promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from caiman_dask._cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_checks_itself(tmp_path, capsys):
    code = main(
        [
            "demo",
            str(tmp_path / "out"),
            "--dims",
            "40",
            "48",
            "--frames",
            "150",
            "--components",
            "10",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rcm[75]" in out and "max abs difference" in out
    assert (tmp_path / "out" / "synthetic" / "synthetic.hdf5").exists()
    assert list((tmp_path / "out" / "synthetic").glob("*_order_F_frames_150.mmap"))


def test_info_on_cnmf_and_movie(caiman_dir, capsys):
    assert main(["info", str(caiman_dir / "cnmf_2p.hdf5")]) == 0
    out = capsys.readouterr().out
    assert "K=31" in out and "A " in out
    assert main(["info", str(caiman_dir / "mov_2p.tif")]) == 0
    assert "(400, 60, 80)" in capsys.readouterr().out


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.hdf5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "x_d1_3_d2_3_d3_1_order_C_frames_5.mmap"
    bad.write_bytes(b"\0" * 8)
    assert main(["info", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_console_script_is_installed():
    r = subprocess.run(
        [sys.executable, "-m", "caiman_dask._cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "demo" in r.stdout


def test_readme_quick_start_matches_ci():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", readme, re.S)
    assert block, "README has no Quick start bash block"
    commands = [c for c in block.group(1).strip().splitlines() if c.strip()]
    assert len(commands) == 2, commands
    assert "caiman-dask demo" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), "the .ci/run must run the README's test command"


def test_export_and_info(caiman_dir, tmp_path, capsys):
    from .conftest import MMAP_2P_C

    out = tmp_path / "r.zarr"
    args = [
        "export",
        str(caiman_dir / "cnmf_2p.hdf5"),
        "--movie",
        str(caiman_dir / MMAP_2P_C),
        "-o",
        str(out),
        "--components",
        "good",
        "--movies",
        "rcm,residuals",
        "--quiet",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "rcm/0" in text and "residuals/0" in text and "rcb/0" not in text
    import caiman_dask as cd

    assert cd.store_info(out)["parameters"]["components"] == "good"
    assert main(args) == 0  # the same export again: nothing to do
    assert main([*args[:-2], "rcm", "--quiet"]) == 2  # other parameters, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    assert "complete" in capsys.readouterr().out
    assert (
        main(
            [
                "export",
                str(caiman_dir / "cnmf_2p.hdf5"),
                "-o",
                str(tmp_path / "x.zarr"),
                "--components",
                "best",
            ]
        )
        == 2
    )
    assert "--components" in capsys.readouterr().err


def test_export_names_the_valid_options(caiman_dir, tmp_path, capsys):
    base = ["export", str(caiman_dir / "cnmf_2p.hdf5"), "-o", str(tmp_path / "x.zarr")]
    assert main([*base, "--movies", "rcm,raw", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "movies='raw' is not one of ['rcm', 'rcb', 'residuals']" in err
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(SystemExit) as e:
        main([*base, "--codec", "gzip"])
    assert e.value.code == 2
    assert "'zstd', 'lz4', 'none'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--zarr-format", "4"])
    assert e.value.code == 2 and "choose from 2, 3" in capsys.readouterr().err
