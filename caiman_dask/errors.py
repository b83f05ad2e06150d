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
    "DenseMovieError",
    "EmptyComponentsWarning",
    "ExpressionError",
    "FileChangedError",
    "FileFormatError",
    "FrameIndexError",
    "MissingDependencyError",
    "MissingFileError",
    "ModelMismatchError",
    "MovieExistsError",
    "NaNWarning",
    "OptionError",
    "SchedulerError",
    "ShapeMismatchError",
    "StoreError",
    "StoreLockedError",
    "StoreWriteError",
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


class StoreLockedError(StoreError):
    """Another export to the same store path is running (the message names its process)."""


class StoreWriteError(CaimanDaskError, OSError):
    """A store could not be written: a read-only place, a full disk (the message says which)."""


class FileChangedError(CaimanDaskError, OSError):
    """A file changed (size or modification time) after it was opened; open it again."""


class SchedulerError(CaimanDaskError, ConnectionError):
    """A dask.distributed scheduler could not be reached or started (the message names it)."""


class MovieExistsError(CaimanDaskError, FileExistsError):
    """:func:`~caiman_dask.save_movie` refuses to replace a file without ``overwrite=True``."""


class DenseMovieError(CaimanDaskError, MemoryError):
    """``np.asarray(movie)`` would build a dense movie above the size limit
    (``CAIMAN_DASK_MAX_DENSE_BYTES``); use ``movie[...]``, ``movie.data`` or
    ``movie.to_xarray()``."""


class MissingDependencyError(CaimanDaskError, ImportError):
    """An optional dependency of the viewer (matplotlib, ipywidgets, imageio...) is missing."""


class CaimanDaskWarning(UserWarning):
    """Base class of caiman_dask warnings."""


class NaNWarning(CaimanDaskWarning):
    """Non-finite values (NaN or inf) in a factor or in the movie: the frames and images of
    the pixels they touch are NaN / inf (the message gives the counts)."""


class EmptyComponentsWarning(CaimanDaskWarning):
    """A component selection is empty: the reconstructed movie is exactly zero."""
