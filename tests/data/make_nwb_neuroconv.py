"""Make NWB files the way the NWB ecosystem writes them: neuroconv + roiextractors.

Run once, by hand, in an environment with neuroconv (from PyPI; never imported by caiman_dask
or by its tests)::

    python -m venv /tmp/re && /tmp/re/bin/pip install neuroconv roiextractors
    /tmp/re/bin/python tests/data/make_nwb_neuroconv.py [CAIMAN_FIXTURES]

Writes ``tests/data/nwb/caiman_2p_neuroconv.nwb`` from the CaImAn 2p fixture
(``cnmf_2p.hdf5``, via ``CaimanSegmentationInterface``) and
``tests/data/nwb/suite2p_neuroconv.nwb`` from ``tests/data/suite2p`` (via
``Suite2pSegmentationInterface``), with neuroconv's default metadata and a fixed session start.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "nwb"


def main() -> int:
    from neuroconv.datainterfaces import (  # only this script needs it
        CaimanSegmentationInterface,
        Suite2pSegmentationInterface,
    )

    fixtures = Path(
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("CAIMAN_DASK_FIXTURES", HERE.parents[2] / "shared/fixtures/caiman")
    )
    OUT.mkdir(exist_ok=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    jobs = [
        (CaimanSegmentationInterface(file_path=str(fixtures / "cnmf_2p.hdf5")), "caiman_2p"),
        (Suite2pSegmentationInterface(folder_path=str(HERE / "suite2p")), "suite2p"),
    ]
    for interface, stem in jobs:
        metadata = interface.get_metadata()
        metadata["NWBFile"]["session_start_time"] = start
        target = OUT / f"{stem}_neuroconv.nwb"
        interface.run_conversion(nwbfile_path=str(target), metadata=metadata, overwrite=True)
        print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
