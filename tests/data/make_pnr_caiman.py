"""Make ``tests/data/pnr_caiman.npz``: CaImAn's own ``correlation_pnr`` on two seeded movies.

Run once, by hand, outside the test suite (CaImAn and OpenCV are never imported by caiman_dask
or its tests)::

    git clone https://github.com/flatironinstitute/CaImAn /tmp/CaImAn
    git -C /tmp/CaImAn checkout 881e627          # the commit the references were made with
    pip install --target /tmp/cv2pkg opencv-python-headless==4.11.0.86
    PYTHONPATH=/tmp/cv2pkg python tests/data/make_pnr_caiman.py /tmp/CaImAn

CaImAn's package needs a conda environment to import as a whole; the four functions
``correlation_pnr`` uses (``summary_images.correlation_pnr`` and ``local_correlations_fft``,
``pre_processing.get_noise_fft`` and ``mean_psd``) need only NumPy, SciPy and OpenCV, so this
script reads their source from the checkout and runs it as it is (nothing of it is copied into
the project). The movies are :func:`tests.test_pnr.onep_movie` (seeded): ``short`` 400 frames
of 26×30 with ``gSig=3``, ``long`` 3300 frames of 14×12 with ``gSig=2`` (over 3072 frames:
CaImAn's three-segment noise rule). CaImAn computes in float32; the images are stored so.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "pnr_caiman.npz"
MOVIES = {"short": (400, (26, 30), 4, 3), "long": (3300, (14, 12), 5, 2)}


def _function(source: str, name: str) -> str:
    """The text of the top-level function ``name`` in ``source``."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("def ")), None)
    return "\n".join(lines[start:end])


def caimans_correlation_pnr(checkout: Path) -> object:
    """CaImAn's ``correlation_pnr`` from a checkout, with the functions it calls."""
    import cv2  # only this script needs it
    from scipy.ndimage import convolve

    ns: dict[str, object] = {"np": np, "cv2": cv2, "convolve": convolve, "logging": logging}
    pre = (checkout / "caiman/source_extraction/cnmf/pre_processing.py").read_text()
    summ = (checkout / "caiman/summary_images.py").read_text()
    for name in ("mean_psd", "get_noise_fft"):
        exec(_function(pre, name), ns)
    for name in ("local_correlations_fft", "correlation_pnr"):
        exec(_function(summ, name), ns)
    return ns["correlation_pnr"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    sys.path.insert(0, str(ROOT))
    from tests.test_pnr import onep_movie

    correlation_pnr = caimans_correlation_pnr(Path(argv[0]))
    out = {}
    for name, (T, dims, seed, gsig) in MOVIES.items():
        Y = onep_movie(T, dims, seed=seed).astype(np.float32)
        cn, pnr = correlation_pnr(Y, gSig=gsig, swap_dim=False)  # type: ignore[operator]
        out[f"{name}_corr"] = np.asarray(cn, np.float32)
        out[f"{name}_pnr"] = np.asarray(pnr, np.float32)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
