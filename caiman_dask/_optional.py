"""Optional dependencies (the viewer's matplotlib, ipywidgets, imageio-ffmpeg, Pillow...),
imported only by the functions that need them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["VIZ_EXTRA", "require"]

#: How to install every optional dependency of the viewer.
VIZ_EXTRA = 'pip install "caiman-dask[viz]"'


def require(module: str, what: str) -> ModuleType:
    """Import an optional ``module`` for ``what`` or raise :class:`MissingDependencyError`
    naming the package and the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pkg = {"PIL": "pillow"}.get(top, top.replace("_", "-"))
        raise MissingDependencyError(
            f"{what} needs the optional package {pkg!r}, which is not installed: "
            f"{VIZ_EXTRA} (or pip install {pkg})."
        ) from exc
