"""The one error hierarchy of caiman_dask.

Every error the library raises on purpose derives from :class:`CaimanDaskError`, so
``except cd.CaimanDaskError`` catches all of them; each one also derives from the builtin
exception a Python user would expect (``ValueError``, ``IndexError``, ``FileNotFoundError``...),
so code written against the builtins keeps working.

Messages name the argument, the value received, what was expected and a fix.
"""

from __future__ import annotations

__all__ = [
    "CaimanDaskError",
    "CaimanDaskWarning",
    "ComponentError",
    "EmptyComponentsWarning",
    "FileFormatError",
    "NaNWarning",
    "OptionError",
    "ShapeMismatchError",
]


class CaimanDaskError(Exception):
    """Base class of every error raised by caiman_dask."""


class ShapeMismatchError(CaimanDaskError, ValueError):
    """Factors, movie and ``dims`` do not fit together (the message names both shapes)."""


class FileFormatError(CaimanDaskError, ValueError):
    """A file is truncated, foreign, or disagrees with its name or with CaImAn's layout."""


class ComponentError(CaimanDaskError, ValueError):
    """A component selection is out of range, of the wrong kind, or undefined in the model."""


class OptionError(CaimanDaskError, ValueError):
    """An option got a value outside the documented set (the message lists the valid ones)."""


class CaimanDaskWarning(UserWarning):
    """Base class of caiman_dask warnings."""


class NaNWarning(CaimanDaskWarning):
    """A factor contains NaN values; every movie frame touching them will be NaN."""


class EmptyComponentsWarning(CaimanDaskWarning):
    """A component selection is empty: the reconstructed movie is exactly zero."""
