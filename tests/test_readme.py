"""The README's quick start is what CI runs: its test command appears verbatim in .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block under '## Quick start'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands():
    install, tests = _quick_start()
    assert "pip install" in install and "caiman-dask demo" in install
    assert tests.startswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = _quick_start()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f"{tests!r} is not a line of .ci/run"
