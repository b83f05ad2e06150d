"""napari's real Qt viewer (``cd.to_napari(model)`` with no viewer given), on a virtual X
display (Xvfb): the path ViewerModel tests cannot reach. Runs in a subprocess, so Qt never
enters the test process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import napari
    import caiman_dask as cd

    m = cd.synthetic(dims=(24, 30), T=40, K=4, seed=3, path=sys.argv[1])
    viewer, layers, live = cd.to_napari(m)
    live.wait()  # the exact limits, set by the background pass
    limits = {l.name: [float(x) for x in l.contrast_limits]
              for l in viewer.layers if hasattr(l, "contrast_limits") and l.ndim == 3}
    exact = {"raw": cd.raw(m), "rcm + rcb": cd.rcm(m) + cd.rcb(m), "residuals": cd.residuals(m)}
    store = cd.to_zarr(m, sys.argv[1] + "/s.zarr", progress=False)
    opened = viewer.open(str(store), plugin="caiman-dask")
    out = {
        "viewer": type(viewer).__name__,
        "layers": [l.name for l in viewer.layers],
        "limits": limits,
        "exact": {k: [mv.min, mv.max] for k, mv in exact.items()},
        "opened": [l.name for l in opened],
        "frame": bool(np.array_equal(np.asarray(viewer.layers["residuals"].data[5]),
                                     cd.residuals(m)[5])),
    }
    viewer.close()
    print("RESULT " + json.dumps(out))
    """
)


def _xvfb() -> tuple[subprocess.Popen[bytes], str] | None:
    exe = shutil.which("Xvfb")
    if exe is None:
        return None
    for n in range(90, 110):
        if os.path.exists(f"/tmp/.X{n}-lock"):
            continue
        proc = subprocess.Popen(
            [exe, f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        if proc.poll() is None:
            return proc, f":{n}"
    return None


def test_qt_viewer_shows_exact_limits_and_opens_stores(tmp_path):
    pytest.importorskip("napari")
    started = _xvfb()
    if started is None:
        if os.environ.get("CAIMAN_DASK_REQUIRE_XVFB"):
            pytest.fail("Xvfb is required (CAIMAN_DASK_REQUIRE_XVFB) but did not start")
        pytest.skip("no Xvfb to give Qt a display: apt-get install xvfb (see .ci/run)")
    proc, display = started
    try:
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        env.setdefault("XDG_RUNTIME_DIR", str(tmp_path))
        run = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    import json

    out = json.loads(lines[0][len("RESULT ") :])
    assert out["viewer"] == "Viewer"  # napari's Qt viewer, not a ViewerModel
    assert out["layers"][:4] == ["raw", "rcm + rcb", "residuals", "footprints"]
    for name, (lo, hi) in out["exact"].items():
        assert out["limits"][name] == pytest.approx([lo, hi], rel=1e-6), name
    assert out["opened"], "the reader plugin opened no layer from the store"
    assert out["frame"]
