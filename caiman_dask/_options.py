"""The one parser of enumerated options.

Options are ``Literal`` types; :func:`choose` checks a value against the valid ones once, at
the public entry point, and raises an :class:`~caiman_dask.errors.OptionError` that names the
argument, the value received and every valid value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from .errors import OptionError

__all__ = ["choose"]

T = TypeVar("T")


def choose(name: str, value: Any, valid: Sequence[T], *, hint: str = "") -> T:
    """``value`` if it is one of ``valid``, else an :class:`OptionError` listing them.

    Parameters
    ----------
    name
        The argument's name, as the user wrote it (``"codec"``, ``"kind"``...).
    value
        What the user passed.
    valid
        The accepted values (the members of the option's ``Literal`` type).
    hint
        An optional sentence appended to the message (a fix, an alternative).

    Examples
    --------
    >>> choose("codec", "zstd", ("zstd", "lz4", "none"))
    'zstd'
    """
    for v in valid:
        if isinstance(value, str) == isinstance(v, str) and not isinstance(value, bool):
            try:
                if bool(value == v):
                    return v
            except (TypeError, ValueError):  # (an array compared with a name)
                continue
    msg = f"{name}={value!r} is not one of {list(valid)}"
    raise OptionError(f"{msg}. {hint}" if hint else msg)
