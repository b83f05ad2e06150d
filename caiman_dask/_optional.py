"""Optional dependencies (the viewers' matplotlib, ipywidgets, imageio-ffmpeg, Pillow, napari,
fastplotlib, xarray; NWB's pynwb, hdmf), imported only by the functions that need them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["VIZ_EXTRA", "require"]

#: How to install every optional dependency of the viewer.
VIZ_EXTRA = 'pip install "caiman-dask[viz]"'


#: The extra that brings each optional package (the viewer's otherwise).
_EXTRA = {"pynwb": "nwb", "hdmf": "nwb", "nwbinspector": "nwb"}


def require(module: str, what: str) -> ModuleType:
    """Import an optional ``module`` for ``what`` or raise :class:`MissingDependencyError`
    naming the package and the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pkg = {"PIL": "pillow"}.get(top, top.replace("_", "-"))
        extra = _EXTRA.get(top, "viz")
        raise MissingDependencyError(
            f"{what} needs the optional package {pkg!r}, which is not installed: "
            f'pip install "caiman-dask[{extra}]" (or pip install {pkg}).'
        ) from exc
