"""Make ``tests/data/nwb/suite2p_export.nwb``: suite2p's own NWB export of the suite2p fixture.

Run once, by hand, in the environment of ``make_suite2p.py`` with pynwb added::

    /tmp/s2p/bin/pip install "pynwb==2.8.3" "hdmf<4"   # suite2p 1.1's export fails on pynwb 4
    /tmp/s2p/bin/python tests/data/make_nwb_suite2p.py

Copies ``tests/data/suite2p`` to a temporary folder, runs ``suite2p.io.save_nwb`` on it (which
writes ``ophys.nwb`` beside the plane folders) and copies the file here.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from suite2p.io.nwb import save_nwb  # only this script needs it

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "suite2p"
        shutil.copytree(HERE / "suite2p", folder)
        save_nwb(str(folder))
        (HERE / "nwb").mkdir(exist_ok=True)
        target = HERE / "nwb" / "suite2p_export.nwb"
        shutil.copy(folder / "ophys.nwb", target)
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
