"""What a movie is made of: a factored part and a streaming part.

Every lazy movie of a model is ``y·Y + ring·B_ring + Σ_j A_j·diag(w_j)·X_j``:

- the **factored part** is a sum of :class:`Factor` terms, each a spatial factor of the model
  (the footprints ``A`` or the low-rank background ``b``) times a trace matrix (``C``,
  ``YrA``, ``S``, ``F_dff``, a user's ``(K, T)`` array, or ``f``) with one weight per
  component (0: absent). ``[A b]·[C; f]`` is again factored, so projections of any factored
  movie are exact from the factors, without the movie;
- the **streaming part** is the movie ``Y`` and the CNMF-E ring background
  ``B_ring = b0 + W·(Y − A·C − b0)`` with scalar coefficients: any movie with one of them is
  reduced by one pass over ``Y``.

RCM is ``A·diag(1_idx)·C``; the low-rank RCB ``b·f``; the ring RCB ``B_ring``; residuals
``Y − A·C − b·f`` (or ``Y − A·C − B_ring``); the raw movie ``Y``. Sums, differences and scalar
multiples of movies of one model are just new descriptions (:meth:`Description.plus`,
:meth:`Description.scaled`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._model import CNMFModel
from .errors import ExpressionError, ModelMismatchError

__all__ = ["Description", "Factor", "Spatial"]

Spatial = Literal["A", "b"]


def _frozen(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float64, copy=True)
    x.setflags(write=False)
    return x


@dataclass(frozen=True, eq=False)
class Factor:
    """``spatial · diag(weights) · traces``: one spatial factor of the model with one trace
    matrix.

    Attributes
    ----------
    spatial
        ``"A"`` (the footprints, ``P × K``) or ``"b"`` (the low-rank background, ``P × nb``).
    traces_name
        ``"C"``, ``"YrA"``, ``"S"``, ``"F_dff"``, ``"f"``, or the dask name of a user's array.
    traces
        The trace matrix ``(K, T)`` (``(nb, T)`` for ``b``) as a dask array.
    weights
        float64, one per column of ``spatial`` (0: the column is absent); read-only.
    """

    spatial: Spatial
    traces_name: str
    traces: da.Array
    weights: np.ndarray

    @property
    def columns(self) -> np.ndarray:
        """The columns that take part (non-zero weight), ascending."""
        return np.flatnonzero(self.weights)

    @property
    def key(self) -> tuple[str, str]:
        return (self.spatial, self.traces_name)


@dataclass(frozen=True, eq=False)
class Description:
    """``y·Y + ring·B_ring + Σ factors`` of one model (see the module docstring)."""

    model: CNMFModel
    factors: tuple[Factor, ...] = ()
    y: float = 0.0
    ring: float = 0.0
    token: str = field(init=False)

    def __post_init__(self) -> None:
        parts = [(f.spatial, f.traces_name, f.weights) for f in self.factors]
        object.__setattr__(self, "token", tokenize(self.model.token, parts, self.y, self.ring))

    # ------------------------------------------------------------------ what it is
    @property
    def streaming(self) -> bool:
        """Whether the movie needs ``Y`` (its statistics take one pass over the movie)."""
        return self.y != 0.0 or self.ring != 0.0

    @cached_property
    def footprints(self) -> tuple[Factor, ...]:
        """The factors on the footprints ``A``."""
        return tuple(f for f in self.factors if f.spatial == "A")

    @cached_property
    def background(self) -> Factor | None:
        """The factor on the low-rank background ``b`` (there is at most one: ``b·f``)."""
        return next((f for f in self.factors if f.spatial == "b"), None)

    @property
    def kernel_footprints(self) -> tuple[Factor, ...]:
        """The footprint factors the frame kernels apply: none when the ring background's
        own ``A·C`` serves the factored part (see :meth:`uniform_rcm`)."""
        if self.ring and self.uniform_rcm() is not None:
            return ()
        return self.footprints

    def kernel_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """The columns of ``A`` of :attr:`kernel_footprints`, factor after factor (a column
        may come twice, with two trace matrices), and their weights."""
        fs = self.kernel_footprints
        if not fs:
            return np.zeros(0, np.int64), np.zeros(0)
        cols = np.concatenate([f.columns for f in fs])
        return cols, np.concatenate([f.weights[f.columns] for f in fs])

    def host_traces(self, f: Factor) -> np.ndarray:
        """``f``'s whole trace matrix in memory, as stored: the model's in-memory ``C`` /
        ``f`` (loaded once per model), other matrices read from their dask array."""
        h = self.model._host
        X = {"C": h.C, "f": h.f}.get(f.traces_name)
        return np.asarray(f.traces.compute(scheduler="sync")) if X is None else X

    def uniform_rcm(self) -> float | None:
        """``c`` when the factored part is exactly ``c·A·C`` over all components, else None
        (the ring background needs ``A·C`` itself: such a movie reuses it)."""
        if len(self.factors) != 1 or self.model.K == 0:
            return None
        (f,) = self.factors
        if f.key != ("A", "C") or not np.all(f.weights == f.weights[0]):
            return None
        return float(f.weights[0])

    # ------------------------------------------------------------------ algebra
    def plus(self, other: Description) -> Description:
        """The description of the sum of two movies of one model."""
        if other.model is not self.model and other.model.token != self.model.token:
            raise ModelMismatchError(
                "these movies come from different models (different factors or movie); a movie "
                "expression combines movies of one model. Build both from the same "
                "cd.open_cnmf / cd.from_arrays result."
            )
        merged: dict[tuple[str, str], Factor] = {f.key: f for f in self.factors}
        for f in other.factors:
            g = merged.get(f.key)
            merged[f.key] = f if g is None else _with_weights(g, g.weights + f.weights)
        factors = tuple(f for f in merged.values() if np.any(f.weights))
        return Description(self.model, factors, self.y + other.y, self.ring + other.ring)

    def scaled(self, s: float) -> Description:
        """The description of ``s`` times the movie."""
        if not math.isfinite(s):
            raise ExpressionError(
                f"a movie can be multiplied by a finite number only, got {s!r}; NaN or inf "
                "would make every frame NaN."
            )
        factors = tuple(_with_weights(f, f.weights * s) for f in self.factors) if s else ()
        return Description(self.model, factors, self.y * s, self.ring * s)


def _with_weights(f: Factor, w: np.ndarray) -> Factor:
    return Factor(f.spatial, f.traces_name, f.traces, _frozen(w))


def rcm_description(
    model: CNMFModel, idx: np.ndarray, traces: da.Array, traces_name: str
) -> Description:
    """``A[:, idx] · traces[idx]`` (an index given twice counts twice, as ``A[:, idx]`` does)."""
    w = np.zeros(model.K)
    np.add.at(w, idx, 1.0)
    if not np.any(w):
        return Description(model)
    return Description(model, (Factor("A", traces_name, traces, _frozen(w)),))


def lowrank_description(model: CNMFModel) -> Description:
    """``b · f``."""
    assert model.b is not None and model.f is not None
    return Description(model, (Factor("b", "f", model.f, _frozen(np.ones(model.nb))),))


def ring_description(model: CNMFModel) -> Description:
    """CNMF-E's ring background ``b0 + W·(Y − A·C − b0)``."""
    return Description(model, ring=1.0)


def raw_description(model: CNMFModel) -> Description:
    """The movie ``Y``."""
    return Description(model, y=1.0)


def residual_description(model: CNMFModel) -> Description:
    """``Y − A·C − B`` with the model's background (low rank, ring, or none)."""
    res = raw_description(model).plus(
        rcm_description(model, np.arange(model.K), model.C, "C").scaled(-1.0)
    )
    if model.background == "lowrank":
        return res.plus(lowrank_description(model).scaled(-1.0))
    if model.background == "ring":
        return res.plus(ring_description(model).scaled(-1.0))
    return res
