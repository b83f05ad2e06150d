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
    "ExpressionError",
    "FileFormatError",
    "FrameIndexError",
    "MissingDependencyError",
    "MissingFileError",
    "ModelMismatchError",
    "MovieExistsError",
    "NaNWarning",
    "OptionError",
    "ShapeMismatchError",
    "StoreError",
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


class MissingFileError(CaimanDaskError, FileNotFoundError):
    """A file or folder the call needs does not exist (the message names the path)."""


class FrameIndexError(CaimanDaskError, IndexError):
    """A movie index is out of range or of a kind movies do not take (``movie[...]``)."""


class ModelMismatchError(CaimanDaskError, ValueError):
    """Movies of different models (or shapes) were combined in one expression."""


class ExpressionError(CaimanDaskError, TypeError):
    """A movie expression that is not linear (``movie * movie``, ``movie + 1.0``...)."""


class StoreError(CaimanDaskError, ValueError):
    """A store path is not ours, exists already, differs in parameters, or is incomplete."""


class MovieExistsError(CaimanDaskError, FileExistsError):
    """:func:`~caiman_dask.save_movie` refuses to replace a file without ``overwrite=True``."""


class MissingDependencyError(CaimanDaskError, ImportError):
    """An optional dependency of the viewer (matplotlib, ipywidgets, imageio...) is missing."""


class CaimanDaskWarning(UserWarning):
    """Base class of caiman_dask warnings."""


class NaNWarning(CaimanDaskWarning):
    """A factor contains NaN values; every movie frame touching them will be NaN."""


class EmptyComponentsWarning(CaimanDaskWarning):
    """A component selection is empty: the reconstructed movie is exactly zero."""
