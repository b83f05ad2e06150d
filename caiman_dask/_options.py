"""The one parser of enumerated options.

Options are ``Literal`` types; :func:`choose` checks a value against the valid ones once, at
the public entry point, and raises an :class:`~caiman_dask.errors.OptionError` that names the
argument, the value received and every valid value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from .errors import OptionError

__all__ = ["choose", "positive_int"]

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


def positive_int(name: str, value: Any, *, what: str, default: str) -> int | None:
    """``value`` as an int if it is ``None`` or an int >= 1, else an :class:`OptionError`
    naming ``what`` it counts and the ``default`` that leaving it out gives.

    Examples
    --------
    >>> positive_int("frame_chunk", 64, what="frames", default="about 64 MiB per chunk")
    64
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise OptionError(
            f"{name}={value!r} is not a positive number of {what}; pass an int >= 1, or leave "
            f"it out for the default ({default})."
        )
    return int(value)
