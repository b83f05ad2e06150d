"""Movie expressions: ``+``, ``-``, unary ``-``, ``scalar * movie`` and ``movie / scalar``.

``cd.rcm(m) + cd.rcb(m)``, ``cd.raw(m) - cd.rcb(m)``, ``2.0 * cd.rcm(m, "good") - cd.rcm(m,
"bad")``... are movies like any other: frames by indexing, ``.data``, ``.min`` / ``.max`` and
exact projections. Everything is checked against a dense float64 brute force computed here from
the model's factors in CaImAn's conventions (``A`` with pixels in Fortran order; frame ``t`` of
``A·C`` is ``(A @ C[:, t]).reshape(dims, order="F")``; the ring background from
``tests/test_ring_movies.dense_ring_reference``), and against CaImAn's fixture references.

Tolerances
----------
- Brute force, float64 models: ``|got - want| <= 1e-10 (|want| + S)``, elementwise, where
  ``S`` (per pixel) is the size of the expression's terms, ``Σ_i |coef_i| · U_i``, with ``U_i``
  a bound of term ``i`` at that pixel (``Σ_k |a_pk| max|trace_k|`` for ``A·C`` and ``b·f``,
  ``max_t |x_p(t)|`` for terms computed from ``Y``). This is ``assert_close_scaled``'s rule with
  the floor taken from the terms instead of ``max |want|``: when terms cancel (``a - a``,
  ``raw - rcm - rcb``) rounding is relative to the terms, not to their small sum.
  float32 movies: ``1e-5`` (float32 rounding of each term, ~6e-8, summed).
- ``std`` is compared as a variance, ``|got² - want²| <= 1e-10 (want² + S²)``: near zero a
  standard deviation is the square root of a rounding error (``sqrt(1e-32) = 1e-16`` of a
  variance computed from covariances), so the test is as tight as the quantity allows.
- ``corr``: ``atol=1e-9`` (as tests/test_projections.py). Where every pixel has noise (raw,
  residuals, a random background) everywhere, NaN patterns included; otherwise only where the
  pixel and its 3×3(×3) neighbours have ``std >= 1e-2 S`` (elsewhere, e.g. under a silent
  component whose ``C`` row is constant, the correlation is a ratio of rounding errors), and NaN
  where no term touches the pixel.
- CaImAn fixtures: ``assert_close_scaled(rtol=1e-10)`` on float64 paths, as
  tests/test_fixtures_fidelity.py and tests/test_projections.py; the 1p float32 path within
  ``atol=1e-3``, as tests/test_ring_movies.py (CaImAn's float32 ring background differs from
  float64 by up to 2.4e-4 on values ~1.5e3).

How reads of ``Y`` are observed: see :class:`LoggedY`.
"""

from __future__ import annotations

import collections
import itertools
import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

import caiman_dask as cd
from caiman_dask._streaming import local_correlations_reference
from caiman_dask.testing import assert_close_scaled, raise_if_dask_computes

from .conftest import MMAP_1P_C
from .test_ring_movies import dense_ring_reference

STATS = ["mean", "std", "min", "max"]
KINDS = [*STATS, "corr"]
RTOL64, RTOL32 = 1e-10, 1e-5


# ---------------------------------------------------------------------------------------------
# A movie Y whose reads are logged (or forbidden)
# ---------------------------------------------------------------------------------------------

_Y_IDS = itertools.count()


class LoggedY:
    """A movie ``(T, *dims)`` behind a NumPy-indexable object that logs the frames of each read.

    Wrapped by ``da.from_array`` and passed as ``Y=`` to ``cd.from_arrays``, it is the only
    route to ``Y``'s values: a dask array gives the model no dask-free reader, so frames,
    ``.data`` and projections all end in :meth:`__getitem__`, whatever graph leads there
    (rechunks, fused or inlined tasks, renamed keys: counting tasks by key name would miss those).
    ``frames_read`` lists every frame index read, so "reads Y once" is: every frame exactly once.

    ``poisoned=True``: every read also raises, so a projection that reads ``Y`` cannot return
    a result, and the log still shows the read if an error is caught and a fallback taken.
    """

    def __init__(self, y: np.ndarray, *, poisoned: bool = False) -> None:
        self._y = y
        self.shape, self.dtype, self.ndim = y.shape, y.dtype, y.ndim
        self.poisoned = poisoned
        self.frames_read: list[int] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        tkey = key[0] if isinstance(key, tuple) else key
        frames = np.atleast_1d(np.arange(self.shape[0])[tkey]).tolist()
        self.frames_read.extend(frames)  # (list.extend is atomic under the GIL)
        if self.poisoned and frames:
            raise AssertionError(f"the movie Y was read: frames {frames[:8]}")
        return self._y[key]

    def dask(self, frame_chunk: int) -> da.Array:
        # a unique name per instance: no cache keyed by Y's name can hide a read
        name = f"{'poisoned' if self.poisoned else 'logged'}-y-{next(_Y_IDS)}"
        meta = np.empty((0,) * self.ndim, self.dtype)
        return da.from_array(self, chunks=(frame_chunk, *self.shape[1:]), name=name, meta=meta)

    def reads_per_frame(self) -> collections.Counter[int]:
        return collections.Counter(self.frames_read)


# ---------------------------------------------------------------------------------------------
# Models and their dense brute force
# ---------------------------------------------------------------------------------------------

# atoms: ("rcm", components, traces) | ("rcb",) | ("raw",) | ("residuals",)
RCM = ("rcm", "all", "C")
RCM_GOOD = ("rcm", "good", "C")
RCM_BAD = ("rcm", "bad", "C")
RCM_YRA = ("rcm", "all", "YrA")
RCM_DFF = ("rcm", "good", "F_dff")
RCB = ("rcb",)
RAW = ("raw",)
RES = ("residuals",)
FACTORED_ATOMS = [RCM, RCM_GOOD, RCM_BAD, RCM_YRA, RCM_DFF, RCB]
ALL_ATOMS = [*FACTORED_ATOMS, RAW, RES]


@dataclass(frozen=True)
class Spec:
    """How a test model is made (static, so hypothesis strategies need no model)."""

    dims: tuple[int, ...]
    T: int
    K: int
    seed: int
    frame_chunk: int | None
    dtype: Any = np.float64
    ring_ssub: int | None = None
    random: bool = False  # random heavily overlapping factors instead of cd.synthetic's

    @property
    def float32(self) -> bool:
        return np.dtype(self.dtype) == np.float32

    @property
    def factored_atoms(self) -> list[tuple[Any, ...]]:
        return [a for a in FACTORED_ATOMS if a != RCB or self.ring_ssub is None]


SPECS = {
    "2d": Spec((18, 22), T=47, K=7, seed=11, frame_chunk=6),  # ragged: 7 x 6 + 5
    "3d": Spec((7, 6, 5), T=31, K=4, seed=12, frame_chunk=4),
    "overlap": Spec((9, 7), T=23, K=5, seed=15, frame_chunk=None, random=True),  # one chunk
    "ring": Spec((16, 20), T=30, K=5, seed=13, frame_chunk=7, ring_ssub=2),  # CNMF-E
    "f32": Spec((16, 20), T=40, K=6, seed=14, frame_chunk=9, dtype=np.float32),
}
FACTORED_SPECS = ["2d", "3d", "overlap"]  # float64, low-rank background


def _factors(spec: Spec) -> dict[str, Any]:
    """The factors of a test model (``cd.from_arrays`` keywords), Y as a NumPy array."""
    rng = np.random.default_rng(spec.seed)
    P, K, T = math.prod(spec.dims), spec.K, spec.T
    if spec.random:  # footprints shared by pairs and triples, negative traces
        A = np.zeros((P, K))
        for k in range(K):
            n = int(rng.integers(1, P // 3))
            A[rng.choice(P, n, replace=False), k] = rng.uniform(0.1, 2.0, n)
        shared = rng.choice(P, P // 4, replace=False)
        A[shared, :3] = rng.uniform(0.1, 2.0, (len(shared), 3))
        out = {
            "A": scipy.sparse.csc_matrix(A),
            "C": rng.normal(size=(K, T)) * 10 - 5,
            "b": rng.normal(size=(P, 2)) * 3,
            "f": rng.normal(size=(2, T)) + 2,
            "Y": (rng.normal(size=(T, *spec.dims)) * 4 + 500).astype(np.float32),
            "idx_components": [0, 2],
            "idx_components_bad": [1, 3, 4],
        }
    else:
        fp = 30.0 if len(spec.dims) == 2 else 20.0
        syn = cd.synthetic(
            dims=spec.dims,
            T=T,
            K=K,
            seed=spec.seed,
            dtype=spec.dtype,
            footprint_px=fp,
            ring_ssub=spec.ring_ssub,
            ring_radius=3.0,
        )
        out = {
            name: getattr(syn, name)
            for name in ("A", "C", "b", "f", "W", "b0", "idx_components", "idx_components_bad")
        }
        out["Y"] = syn.Y.compute()
    out["YrA"] = (rng.normal(size=(K, T)) * 3).astype(spec.dtype)
    out["F_dff"] = rng.uniform(-0.5, 2.0, size=(K, T)).astype(spec.dtype)
    return out


class Brute:
    """Dense float64 movies ``(T, *dims)`` of one model, from its factors, by brute force."""

    def __init__(self, spec: Spec, factors: dict[str, Any]) -> None:
        self.spec = spec
        T, dims = spec.T, spec.dims
        self.shape = (T, *dims)

        def dense(x: Any) -> np.ndarray | None:
            if x is None:
                return None
            x = x.compute() if isinstance(x, da.Array) else x
            x = x.todense() if hasattr(x, "todense") else x
            return np.asarray(x, dtype=np.float64)

        self.A = dense(factors["A"])  # (P, K), Fortran pixel order
        self.traces = {n: dense(factors[n]) for n in ("C", "YrA", "F_dff")}
        self.b, self.f = dense(factors.get("b")), dense(factors.get("f"))
        self.W, self.b0 = dense(factors.get("W")), dense(factors.get("b0"))
        self.Y = np.asarray(factors["Y"], dtype=np.float64)
        self.good = np.asarray(factors["idx_components"])
        self.bad = np.asarray(factors["idx_components_bad"])
        self._movies: dict[Any, np.ndarray] = {}
        self._bounds: dict[Any, np.ndarray] = {}

    def frames(self, X: np.ndarray) -> np.ndarray:
        """``(P, T)`` in Fortran pixel order -> ``(T, *dims)``, CaImAn's ``reshape``."""
        return np.reshape(X.T, self.shape, order="F")

    def image(self, x: np.ndarray) -> np.ndarray:
        return np.reshape(x, self.spec.dims, order="F")

    def idx(self, sel: Any) -> np.ndarray:
        if isinstance(sel, str):
            return {"all": np.arange(self.spec.K), "good": self.good, "bad": self.bad}[sel]
        return np.asarray(sel, dtype=np.int64)

    def movie(self, atom: tuple[Any, ...]) -> np.ndarray:
        if atom not in self._movies:
            self._movies[atom] = self._movie(atom)
        return self._movies[atom]

    def _movie(self, atom: tuple[Any, ...]) -> np.ndarray:
        if atom[0] == "rcm":
            i = self.idx(atom[1])
            return self.frames(self.A[:, i] @ self.traces[atom[2]][i])
        if atom == RCB:
            if self.spec.ring_ssub is None:
                return self.frames(self.b @ self.f)
            spec = self.spec
            B, _ = dense_ring_reference(
                self.A, self.traces["C"], self.W, self.b0, self.Y, spec.dims, spec.ring_ssub
            )
            return B
        if atom == RAW:
            return self.Y
        if atom == RES:
            return self.Y - self.movie(RCM) - self.movie(RCB)
        raise AssertionError(atom)

    def bound(self, atom: tuple[Any, ...]) -> np.ndarray:
        """An image bounding the terms a correct implementation sums at each pixel."""
        if atom not in self._bounds:
            self._bounds[atom] = self._bound(atom)
        return self._bounds[atom]

    def _bound(self, atom: tuple[Any, ...]) -> np.ndarray:
        if atom[0] == "rcm":
            i = self.idx(atom[1])
            tr = self.traces[atom[2]][i]
            peak = np.abs(tr).max(axis=1) if tr.size else np.zeros(0)
            return self.image(np.abs(self.A[:, i]) @ peak)
        y_peak = np.abs(self.Y).max(axis=0)
        if atom == RCB:
            if self.spec.ring_ssub is None:
                return self.image(np.abs(self.b) @ np.abs(self.f).max(axis=1))
            # b0 + W·(D·Y - D·A·C - D·b0): sums over a ring of other pixels
            rest = y_peak.max() + self.bound(RCM).max() + np.abs(self.b0).max()
            return np.abs(self.movie(RCB)).max(axis=0) + rest
        if atom == RAW:
            return y_peak
        if atom == RES:
            return y_peak + self.bound(RCM) + self.bound(RCB)
        raise AssertionError(atom)


@dataclass
class Case:
    spec: Spec
    factors: dict[str, Any]
    model: cd.CNMFModel
    brute: Brute
    _variants: dict[str, Any] = field(default_factory=dict)

    def with_y(self, *, poisoned: bool) -> tuple[cd.CNMFModel, LoggedY]:
        """The same model with its movie behind a fresh :class:`LoggedY`."""
        log = LoggedY(self.factors["Y"], poisoned=poisoned)
        chunk = self.spec.frame_chunk or self.spec.T
        return _model(self.spec, {**self.factors, "Y": log.dask(chunk)}), log

    def poisoned(self) -> tuple[cd.CNMFModel, LoggedY]:
        """One shared model whose ``Y`` raises when read (for tests that must never read it)."""
        if "poisoned" not in self._variants:
            self._variants["poisoned"] = self.with_y(poisoned=True)
        return self._variants["poisoned"]


def _model(spec: Spec, factors: dict[str, Any]) -> cd.CNMFModel:
    return cd.from_arrays(**factors, dims=spec.dims, frame_chunk=spec.frame_chunk)


_CASES: dict[str, Case] = {}


def case(name: str) -> Case:
    """The test model ``name`` and its brute force, built once per session."""
    if name not in _CASES:
        spec = SPECS[name]
        factors = _factors(spec)
        _CASES[name] = Case(spec, factors, _model(spec, factors), Brute(spec, factors))
    return _CASES[name]


# ---------------------------------------------------------------------------------------------
# Expression trees: built with the operators, and evaluated by brute force
# ---------------------------------------------------------------------------------------------
# ("atom", atom) | ("add", x, y) | ("sub", x, y) | ("neg", x) | ("lmul", s, x) | ("rmul", x, s)
# | ("div", x, s)


def atom(a: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("atom", a)


def add(x: Any, y: Any) -> tuple[Any, ...]:
    return ("add", x, y)


def sub(x: Any, y: Any) -> tuple[Any, ...]:
    return ("sub", x, y)


def neg(x: Any) -> tuple[Any, ...]:
    return ("neg", x)


def mul(s: Any, x: Any) -> tuple[Any, ...]:
    return ("lmul", s, x)


def movie_of(model: cd.CNMFModel, a: tuple[Any, ...]) -> cd.Movie:
    if a[0] == "rcm":
        sel = list(a[1]) if isinstance(a[1], tuple) else a[1]
        return cd.rcm(model, sel, traces=a[2])
    return {"rcb": cd.rcb, "raw": cd.raw, "residuals": cd.residuals}[a[0]](model)


def build(tree: tuple[Any, ...], model: cd.CNMFModel) -> Any:
    """The expression, written with Python's operators (a fresh movie per leaf)."""
    op = tree[0]
    if op == "atom":
        return movie_of(model, tree[1])
    if op == "add":
        return build(tree[1], model) + build(tree[2], model)
    if op == "sub":
        return build(tree[1], model) - build(tree[2], model)
    if op == "neg":
        return -build(tree[1], model)
    if op == "lmul":
        return tree[1] * build(tree[2], model)
    if op == "rmul":
        return build(tree[1], model) * tree[2]
    if op == "div":
        return build(tree[1], model) / tree[2]
    raise AssertionError(op)


def leaves(tree: tuple[Any, ...], coef: float = 1.0) -> Iterator[tuple[float, tuple[Any, ...]]]:
    """``(coefficient, atom)`` of every leaf: the expression is ``Σ coefficient · atom``."""
    op = tree[0]
    if op == "atom":
        yield coef, tree[1]
    elif op in ("add", "sub"):
        yield from leaves(tree[1], coef)
        yield from leaves(tree[2], coef if op == "add" else -coef)
    elif op == "neg":
        yield from leaves(tree[1], -coef)
    elif op == "lmul":
        yield from leaves(tree[2], coef * float(tree[1]))
    elif op == "rmul":
        yield from leaves(tree[1], coef * float(tree[2]))
    elif op == "div":
        yield from leaves(tree[1], coef / float(tree[2]))
    else:
        raise AssertionError(op)


def reference(c: Case, tree: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The dense float64 movie of ``tree`` and its per-pixel term scale ``S``."""
    want = np.zeros(c.brute.shape)
    scale = np.zeros(c.spec.dims)
    for coef, a in leaves(tree):
        want += coef * c.brute.movie(a)
        scale += abs(coef) * c.brute.bound(a)
    return want, scale


def rtol_of(movie: cd.Movie) -> float:
    """The tolerance for a movie's dtype (``raw + raw`` is float32 even in a float64 model)."""
    return RTOL32 if movie.dtype == np.float32 else RTOL64


def assert_close_terms(got: Any, want: np.ndarray, scale: Any, rtol: float) -> None:
    """``|got - want| <= rtol (|want| + scale)`` elementwise (NaN fails)."""
    g = np.asarray(got, dtype=np.float64)
    assert g.shape == want.shape, f"shape {g.shape} != expected {want.shape}"
    err = np.abs(g - want)
    bound = rtol * (np.abs(want) + scale)
    bad = ~(err <= bound)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), err.shape)
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} values differ; worst at {worst}: got {g[worst]!r}, "
            f"want {want[worst]!r}, allowed {bound[worst]!r}"
        )


def check_projections(
    got: dict[str, np.ndarray],
    dense: np.ndarray,
    scale: np.ndarray,
    rtol: float,
    *,
    corr_everywhere: bool = False,
) -> None:
    """``got`` (from ``cd.project``) against brute-force projections of ``dense``."""
    dims = dense.shape[1:]
    for k, img in got.items():
        assert isinstance(img, np.ndarray) and img.shape == dims and img.dtype == np.float64, k
    if "mean" in got:
        assert_close_terms(got["mean"], dense.mean(axis=0), scale, rtol)
    if "min" in got:
        assert_close_terms(got["min"], dense.min(axis=0), scale, rtol)
    if "max" in got:
        assert_close_terms(got["max"], dense.max(axis=0), scale, rtol)
    if "std" in got:  # ddof=0, compared as variances (see the module docstring)
        assert (got["std"] >= 0).all()
        assert_close_terms(got["std"] ** 2, dense.var(axis=0), scale**2, rtol)
    if "corr" in got:
        with np.errstate(invalid="ignore", divide="ignore"):
            want = local_correlations_reference(dense)
        if corr_everywhere:
            np.testing.assert_array_equal(np.isnan(got["corr"]), np.isnan(want))
            np.testing.assert_allclose(got["corr"], want, rtol=0, atol=1e-9, equal_nan=True)
            return
        # where a pixel or a neighbour is (nearly) constant, the correlation is a ratio of
        # rounding errors (e.g. under silent components, whose C rows are constant): compare
        # where every pixel of the 3x3(x3) neighbourhood has std >= 1e-2 S
        std = dense.std(axis=0)
        ok = (std > 0) & (std >= 1e-2 * scale)
        ok = scipy.ndimage.binary_erosion(ok, np.ones((3,) * len(dims)), border_value=1)
        np.testing.assert_allclose(got["corr"][ok], want[ok], rtol=0, atol=1e-9)
        # no term touches these pixels: exactly zero in every frame, so NaN as in CaImAn
        untouched = scale == 0
        assert np.isnan(want[untouched]).all()
        assert np.isnan(got["corr"][untouched]).all()


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

_COEFS = [0, 1, -1, 2, -3, 0.5, -0.25, 1 / 3, -2.75, 0.1, 1e-3, 7.5]


def scalars(spec: Spec, *, nonzero: bool = False) -> st.SearchStrategy[Any]:
    """Python ints and floats and NumPy scalars; for float32 movies only those that keep float32
    under any promotion rule (Python numbers, ``np.float32``)."""
    vals = [v for v in _COEFS if v or not nonzero]
    out = [st.sampled_from(vals), st.sampled_from(vals).map(np.float32)]
    if not spec.float32:
        ints = [v for v in vals if float(v).is_integer()]
        out += [st.sampled_from(vals).map(np.float64), st.sampled_from(ints).map(np.int64)]
    return st.one_of(*out)


def atoms(spec: Spec, *, factored: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    fixed = spec.factored_atoms if factored else [*spec.factored_atoms, RCB, RAW, RES]
    subset = st.lists(st.integers(0, spec.K - 1), min_size=1, max_size=spec.K, unique=True)
    traces = st.sampled_from(["C", "C", "YrA", "F_dff"])
    chosen = st.tuples(st.just("rcm"), subset.map(tuple), traces)
    return st.one_of(st.sampled_from(sorted(set(fixed), key=repr)), chosen)


def trees(spec: Spec, *, factored: bool = False) -> st.SearchStrategy[tuple[Any, ...]]:
    leaf = atoms(spec, factored=factored).map(atom)
    s, nz = scalars(spec), scalars(spec, nonzero=True)

    def extend(x: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.just("add"), x, x),
            st.tuples(st.just("sub"), x, x),
            st.tuples(st.just("neg"), x),
            st.tuples(st.just("lmul"), s, x),
            st.tuples(st.just("rmul"), x, s),
            st.tuples(st.just("div"), x, nz),
        )

    return extend(st.recursive(leaf, extend, max_leaves=5))  # at least one operation


def index_keys(spec: Spec) -> st.SearchStrategy[Any]:
    """Every kind of index the movies take: ints, slices with steps, int arrays, boolean masks,
    spatial ints and slices, ``...``."""
    T = spec.T
    tkey = st.one_of(
        st.integers(-T, T - 1),
        st.slices(T),
        st.lists(st.integers(-T, T - 1), max_size=6).map(lambda x: np.array(x, np.int64)),
        st.lists(st.booleans(), min_size=T, max_size=T).map(np.array),
    )
    space = st.tuples(
        *(st.one_of(st.just(slice(None)), st.integers(-d, d - 1), st.slices(d)) for d in spec.dims)
    )
    return st.one_of(
        tkey,
        st.tuples(tkey, st.just(Ellipsis)),
        st.tuples(tkey, space).map(lambda ts: (ts[0], *ts[1])),
    )


def windows(spec: Spec) -> st.SearchStrategy[Any]:
    T = spec.T
    return st.one_of(
        st.none(),
        st.integers(0, T - 1).flatmap(lambda a: st.integers(a + 1, T).map(lambda b: slice(a, b))),
        st.integers(2, 5).map(lambda s: slice(None, None, s)),
        st.lists(st.integers(-T, T - 1), min_size=1, max_size=12).map(
            lambda x: np.array(x, np.int64)
        ),
        st.lists(st.booleans(), min_size=T, max_size=T).filter(any).map(np.array),
    )


def _per_spec(make: Callable[[Spec], st.SearchStrategy[Any]], names: list[str]) -> Any:
    return st.sampled_from(names).flatmap(lambda n: st.tuples(st.just(n), make(SPECS[n])))


# ---------------------------------------------------------------------------------------------
# 1. Frames of random expressions
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    drawn=_per_spec(lambda s: st.tuples(trees(s), index_keys(s)), list(SPECS)),
)
def test_frames_of_random_expressions_match_brute_force(drawn):
    name, (tree, key) = drawn
    c = case(name)
    expr = build(tree, c.model)
    parts = [movie_of(c.model, a) for _, a in leaves(tree)]
    assert isinstance(expr, cd.Movie)
    assert type(expr).__name__ in cd.__all__
    assert expr.shape == c.brute.shape and expr.ndim == 1 + len(c.spec.dims)
    assert len(expr) == c.spec.T
    assert expr.dtype == np.result_type(*(p.dtype for p in parts))
    want, scale = reference(c, tree)
    got = expr[key]
    expected = want[key]
    assert np.asarray(got).dtype == expr.dtype
    if isinstance(got, np.ndarray) and got.ndim:
        assert got.flags.c_contiguous
    assert_close_terms(got, expected, np.broadcast_to(scale, want.shape)[key], rtol_of(expr))


# fixed expressions used below
DEN = add(atom(RCM), atom(RCB))  # what CaImAn's play_movie shows
BGSUB = sub(atom(RAW), atom(RCB))
MIX = sub(mul(2.0, atom(RCM_GOOD)), atom(RCM_BAD))
NESTED = sub(add(atom(RCM_GOOD), atom(RCB)), mul(2, neg(sub(atom(RCM_BAD), atom(RES)))))
FACTORED = add(mul(-0.75, atom(RCM_YRA)), ("div", sub(atom(RCM_BAD), atom(RCB)), 3))
EXPRESSIONS = {"den": DEN, "bgsub": BGSUB, "mix": MIX, "nested": NESTED, "factored": FACTORED}


def test_indexing_like_the_other_movies():
    c = case("2d")
    expr, T = build(NESTED, c.model), c.spec.T
    want, scale = reference(c, NESTED)
    mask = np.zeros(T, bool)
    mask[[1, 4, 20]] = True
    for key in (
        3,
        -1,
        slice(None, None, -4),
        [5, 0, 5],
        np.array([-2, 7]),
        mask,
        (slice(2, 30, 3), slice(4, 11), -3),
        (Ellipsis, 5),
        (7, Ellipsis, slice(None, None, 2)),
        (3, 4, 5),
    ):
        assert_close_terms(
            expr[key], want[key], np.broadcast_to(scale, want.shape)[key], rtol_of(expr)
        )
    assert np.ndim(expr[3, 4, 5]) == 0
    for key in (T, -T - 1, (0, 18), [0, T]):
        with pytest.raises(IndexError):
            expr[key]
    with pytest.raises(IndexError):
        expr[None]


# ---------------------------------------------------------------------------------------------
# 2. .data: values, chunks, laziness, names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("expr_name", ["den", "bgsub", "nested"])
def test_data_matches_frames_and_brute_force(name, expr_name):
    c = case(name)
    tree = EXPRESSIONS[expr_name]
    with raise_if_dask_computes():  # building an expression and its graph computes nothing
        expr = build(tree, c.model)
        data = expr.data
        again = build(tree, c.model).data
        shape, dtype, n = expr.shape, expr.dtype, len(expr)
    assert data.name == again.name  # deterministic names
    assert set(data.__dask_graph__().keys()) == set(again.__dask_graph__().keys())
    assert isinstance(data, da.Array) and data.shape == shape and data.dtype == dtype
    assert n == c.spec.T
    # time chunks follow the movie's (ragged or single), one chunk in space
    assert data.chunks[0] == c.model.Y.chunks[0] == cd.rcm(c.model).data.chunks[0]
    assert data.chunks[1:] == tuple((d,) for d in c.spec.dims)
    want, scale = reference(c, tree)
    got = data.compute()
    assert got.dtype == dtype
    assert_close_terms(got, want, scale, rtol_of(expr))
    assert_close_terms(expr[...], want, scale, rtol_of(expr))
    assert_close_terms(data[3:11].compute(), want[3:11], scale, rtol_of(expr))


def test_names_tell_expressions_apart():
    m = case("2d").model
    a, b = cd.rcm(m, "good"), cd.rcb(m)
    names = [
        (a + b).data.name,
        (a - b).data.name,
        (2 * a + b).data.name,
        (3 * a + b).data.name,
        (a / 2 + b).data.name,
        (-a).data.name,
        (a + cd.rcm(m, "bad")).data.name,
        (cd.rcm(case("overlap").model) + cd.rcb(case("overlap").model)).data.name,
        (cd.rcm(m) + cd.rcb(m)).data.name,
    ]
    assert len(set(names)) == len(names)
    assert (2 * a + b).data.name == (2 * cd.rcm(m, "good") + cd.rcb(m)).data.name


def test_dtypes_follow_numpy_promotion():
    m64, m32 = case("2d").model, case("f32").model
    assert (cd.rcm(m64) + cd.raw(m64)).dtype == np.float64  # float64 factors, float32 Y
    assert (cd.rcm(m32) - cd.raw(m32)).dtype == np.float32
    assert (2 * cd.rcm(m32) / 3).dtype == np.float32
    mixed = cd.rcm(m32, dtype=np.float64) + cd.rcb(m32)
    assert mixed.dtype == np.float64
    assert mixed[0].dtype == mixed.data.dtype == np.float64
    assert (cd.rcm(m64, dtype=np.float32) + cd.rcb(m64, dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("s", [2, 2.5, np.float64(2.5), np.float32(2.5), np.int64(2), np.int32(-2)])
def test_numpy_and_python_scalars_on_either_side(s):
    c = case("2d")
    a = cd.rcm(c.model, "good")
    want = float(s) * c.brute.movie(RCM_GOOD)
    scale = abs(float(s)) * c.brute.bound(RCM_GOOD)
    for expr in (s * a, a * s):
        assert isinstance(expr, cd.Movie) and expr.dtype == np.float64  # not a NumPy array
        assert_close_terms(expr[5:9], want[5:9], scale, RTOL64)
    quotient = a / s
    assert isinstance(quotient, cd.Movie)
    assert_close_terms(quotient[2], c.brute.movie(RCM_GOOD)[2] / float(s), scale, RTOL64)


# ---------------------------------------------------------------------------------------------
# 3. Projections and min / max
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(drawn=_per_spec(lambda s: st.tuples(trees(s, factored=True), windows(s)), FACTORED_SPECS))
def test_factored_projections_are_exact_and_never_read_y(drawn):
    """``[A b]·[C; f]`` is again a factored movie: projections come from the factors.

    The model's ``Y`` is a poisoned :class:`LoggedY`: a read raises inside the computation and
    is logged, so a projection that touches ``Y`` fails however it got there."""
    name, (tree, window) = drawn
    c = case(name)
    model, log = c.poisoned()
    log.frames_read.clear()
    expr = build(tree, model)
    got = cd.project(expr, KINDS, frames=window)
    lo, hi = expr.min, expr.max
    assert log.frames_read == []
    want, scale = reference(c, tree)
    check_projections(got, want if window is None else want[window], scale, rtol_of(expr))
    assert isinstance(lo, float) and isinstance(hi, float)
    assert abs(lo - want.min()) <= rtol_of(expr) * scale.max()
    assert abs(hi - want.max()) <= rtol_of(expr) * scale.max()


@pytest.mark.parametrize("name", FACTORED_SPECS)
@pytest.mark.parametrize("expr_name", ["den", "mix", "factored"])
def test_factored_projections_everywhere(name, expr_name):
    """The issue's expressions, on all three factored models, with a single kind too."""
    c = case(name)
    model, log = c.poisoned()
    log.frames_read.clear()
    tree = EXPRESSIONS[expr_name]
    expr = build(tree, model)
    got = cd.project(expr, KINDS)
    single = cd.project(build(tree, model), "max")
    assert log.frames_read == []
    want, scale = reference(c, tree)
    # the random model has no silent component: CaImAn's NaN pattern holds exactly
    check_projections(got, want, scale, rtol_of(expr), corr_everywhere=name == "overlap")
    assert_close_terms(single, want.max(axis=0), scale, rtol_of(expr))


STREAMING = {
    "bgsub": BGSUB,
    "residual": sub(sub(atom(RAW), atom(RCM)), atom(RCB)),
    "res+good": add(atom(RES), mul(0.5, atom(RCM_GOOD))),
    "2raw-res": sub(mul(2, atom(RAW)), atom(RES)),
    "den": DEN,  # streaming only for the ring background
    "nested": NESTED,
}


@pytest.mark.parametrize(
    ("name", "expr_name"),
    [
        (n, e)
        for n in ("2d", "3d", "ring")
        for e in STREAMING
        if e != "den" or SPECS[n].ring_ssub  # (factored otherwise: tested above)
    ],
)
def test_streaming_projections_read_y_once(name, expr_name):
    c = case(name)
    tree = STREAMING[expr_name]
    model, log = c.with_y(poisoned=False)
    expr = build(tree, model)
    got = cd.project(expr, STATS)
    reads = log.reads_per_frame()
    assert sorted(reads) == list(range(c.spec.T)), "every frame of Y is read"
    assert set(reads.values()) == {1}, f"frames read more than once: {reads.most_common(3)}"
    want, scale = reference(c, tree)
    check_projections(got, want, scale, rtol_of(expr))
    check_projections(
        {"corr": cd.project(expr, "corr")}, want, scale, rtol_of(expr), corr_everywhere=True
    )
    assert isinstance(expr.min, float) and isinstance(expr.max, float)
    assert abs(expr.min - want.min()) <= rtol_of(expr) * scale.max()
    assert abs(expr.max - want.max()) <= rtol_of(expr) * scale.max()


@pytest.mark.parametrize("name", ["2d", "ring"])
@pytest.mark.parametrize("kind", ["slice", "step", "indices", "mask"])
def test_projection_windows(name, kind):
    c = case(name)
    T = c.spec.T
    rng = np.random.default_rng(5)
    mask = rng.random(T) < 0.4
    frames = {
        "slice": slice(5, T - 3),
        "step": slice(None, None, 3),
        "indices": rng.choice(T, 12),  # repeats count twice, as in NumPy
        "mask": mask,
    }[kind]
    for tree in (BGSUB, MIX, NESTED):
        expr = build(tree, c.model)
        want, scale = reference(c, tree)
        got = cd.project(expr, KINDS, frames=frames)
        check_projections(got, want[frames], scale, rtol_of(expr))


# ---------------------------------------------------------------------------------------------
# a - a, 0 * a, empty selections
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_name", ["rcm", "rcb", "raw", "residuals"])
def test_a_minus_a_and_zero_times_a_are_exactly_zero(a_name):
    c = case("2d")
    a = {"rcm": RCM_GOOD, "rcb": RCB, "raw": RAW, "residuals": RES}[a_name]
    same = movie_of(c.model, a)
    for expr in (same - same, movie_of(c.model, a) - movie_of(c.model, a), 0 * same, same * 0.0):
        assert not expr[...].any() and not expr[7].any()
        assert not expr.data.compute().any()
        imgs = cd.project(expr, KINDS)
        for k in STATS:
            assert not imgs[k].any(), k
        assert np.isnan(imgs["corr"]).all()  # a constant movie, as CaImAn gives
        assert expr.min == 0.0 and expr.max == 0.0


def test_empty_selection_sums():
    c = case("2d")
    with pytest.warns(cd.EmptyComponentsWarning):
        empty = cd.rcm(c.model, [])
    expr = empty + cd.rcb(c.model)  # (any further warning is an error: filterwarnings)
    want, scale = reference(c, atom(RCB))
    assert_close_terms(expr[...], want, scale, RTOL64)
    assert_close_terms(expr.data.compute(), want, scale, RTOL64)
    check_projections(cd.project(expr, KINDS), want, scale, RTOL64, corr_everywhere=True)
    zero = 2 * empty - empty / 3
    assert zero.shape == c.brute.shape and not zero[...].any()
    assert zero.min == 0.0 and zero.max == 0.0
    imgs = cd.project(zero, KINDS)
    assert not any(imgs[k].any() for k in STATS) and np.isnan(imgs["corr"]).all()


# ---------------------------------------------------------------------------------------------
# 4. CaImAn's fixtures
# ---------------------------------------------------------------------------------------------


def test_2p_denoised_and_good_plus_bad(model_2p, refs_2p):
    m, fi = model_2p, refs_2p["frame_indices"]
    den = cd.rcm(m) + cd.rcb(m)
    assert den.dtype == np.float64
    want = refs_2p["rcm_at_frame_indices"] + refs_2p["rcb_at_frame_indices"]
    assert_close_scaled(den[fi], want)
    for n, t in enumerate(fi):
        assert_close_scaled(den[int(t)], want[n])
    t0, t1 = refs_2p["slice_start_stop"]
    frames = refs_2p["rcm_frames_10_50"] + refs_2p["rcb_frames_10_50"]
    assert_close_scaled(den[t0:t1], frames)
    assert_close_scaled(den.data[t0:t1].compute(), frames)
    assert cd.project(den, "max").shape == (60, 80)
    good, bad = refs_2p["idx_components"], refs_2p["idx_components_bad"]
    assert not set(good) & set(bad) and sorted([*good, *bad]) == list(range(m.K))
    both = cd.rcm(m, "good") + cd.rcm(m, "bad")
    assert_close_scaled(both[fi], refs_2p["rcm_at_frame_indices"])
    assert_close_scaled(both[t0:t1], refs_2p["rcm_frames_10_50"])
    for k in STATS:
        assert_close_scaled(cd.project(both, k), refs_2p[f"rcm_proj_{k}"])


def test_2p_residual_expression(model_2p, refs_2p):
    m, fi = model_2p, refs_2p["frame_indices"]
    res = cd.raw(m) - cd.rcm(m) - cd.rcb(m)
    assert res.dtype == np.float64
    assert_close_scaled(res[fi], refs_2p["residual_at_frame_indices"])
    t0, t1 = refs_2p["slice_start_stop"]
    assert_close_scaled(res.data[t0:t1].compute(), refs_2p["residual_frames_10_50"])
    imgs = cd.project(res, STATS)
    for k in STATS:
        assert_close_scaled(imgs[k], refs_2p[f"residual_proj_{k}"])
    assert res.min == pytest.approx(refs_2p["residual_proj_min"].min(), rel=1e-10)
    assert res.max == pytest.approx(refs_2p["residual_proj_max"].max(), rel=1e-10)
    corr = cd.project(res, "corr")
    ref = refs_2p["correlation_image_residual"]
    np.testing.assert_array_equal(np.isnan(corr), np.isnan(ref))
    np.testing.assert_allclose(corr, ref, rtol=0, atol=1e-10, equal_nan=True)


@pytest.fixture(scope="module")
def model_1p(caiman_dir):
    return cd.open_cnmf(caiman_dir / "cnmf_1p.hdf5", movie=caiman_dir / MMAP_1P_C)


def test_1p_ring_expressions(model_1p, refs_1p):
    m, fi, f64 = model_1p, refs_1p["frame_indices"], np.float64
    assert m.background == "ring"
    bgsub = cd.raw(m, dtype=f64) - cd.rcb(m, dtype=f64)  # = residual + A·C
    want = refs_1p["residual_at_frame_indices"] + refs_1p["rcm_at_frame_indices"]
    assert_close_scaled(bgsub[fi], want)
    den = cd.rcm(m, dtype=f64) + cd.rcb(m, dtype=f64)
    assert_close_scaled(den[fi], refs_1p["rcm_at_frame_indices"] + refs_1p["rcb_at_frame_indices"])
    assert_close_scaled(
        den.data[10:50].compute(), refs_1p["rcm_frames_10_50"] + refs_1p["rcb_frames_10_50"]
    )
    res = bgsub - cd.rcm(m, dtype=f64)
    assert_close_scaled(res[10:50], refs_1p["residual_frames_10_50"])
    imgs = cd.project(res, STATS)
    for k in STATS:
        assert_close_scaled(imgs[k], refs_1p[f"residual_proj_{k}"])
    # the default float32 path (CaImAn's float32 ring background is within 2.4e-4 of float64)
    bg32 = cd.raw(m) - cd.rcb(m)
    assert bg32.dtype == np.float32 and bg32[0].dtype == np.float32
    np.testing.assert_allclose(bg32[fi], want, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# 5. Errors
# ---------------------------------------------------------------------------------------------


def test_movies_of_different_models_do_not_combine():
    m1 = case("2d").model
    spec = SPECS["2d"]
    m2 = _model(spec, _factors(Spec(spec.dims, spec.T, spec.K, seed=99, frame_chunk=6)))
    assert m2.dims == m1.dims and m2.T == m1.T and m2.K == m1.K
    other_dims = case("f32").model  # (16, 20)
    other_T = _model(spec, _factors(Spec(spec.dims, 40, spec.K, seed=11, frame_chunk=6)))
    for make in (
        lambda: cd.rcm(m1) + cd.rcm(m2),
        lambda: cd.raw(m1) - cd.rcb(m2),
        lambda: (cd.rcm(m1) + cd.rcb(m1)) - 2 * cd.residuals(m2),
        lambda: cd.rcm(m2, "good") - (cd.rcm(m1) / 2),
        lambda: cd.rcm(m1) + cd.rcb(other_dims),
        lambda: cd.raw(other_T) - cd.rcb(m1),
    ):
        with pytest.raises(cd.CaimanDaskError, match=r"(?i)model") as err:
            make()
        assert isinstance(err.value, ValueError)


def test_only_linear_expressions():
    m = case("2d").model
    a, b = cd.rcm(m), cd.rcb(m)
    for make in (
        lambda: a * b,
        lambda: a * a,
        lambda: (a + b) * a,
        lambda: a * np.ones(3),
        lambda: a * np.ones(a.shape),
        lambda: a * np.array([2.0]),
        lambda: a / b,
    ):
        with pytest.raises(cd.CaimanDaskError, match=r"(?i)number|scalar") as err:
            make()
        assert isinstance(err.value, TypeError)
    for make in (lambda: a + 1.0, lambda: a - 1.0, lambda: 1.0 + a, lambda: (a + b) + 2):
        with pytest.raises(cd.CaimanDaskError, match=r"(?i)movie"):
            make()
    with pytest.raises(TypeError):
        2.0 / a
    for make in (
        lambda: a * float("nan"),
        lambda: float("nan") * a,
        lambda: a * np.float32("nan"),
        lambda: a * math.inf,
        lambda: -math.inf * (a - b),
        lambda: a / float("nan"),
    ):
        with pytest.raises(cd.CaimanDaskError, match=r"(?i)finite|nan|inf") as err:
            make()
        assert isinstance(err.value, ValueError)


# ---------------------------------------------------------------------------------------------
# 6. Pickling (movies travel to dask workers)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2d", "ring"])
def test_pickled_expression_gives_the_same_frames(name):
    c = case(name)
    expr = build(NESTED, c.model)
    back = pickle.loads(pickle.dumps(expr))
    assert isinstance(back, cd.Movie) and back.shape == expr.shape and back.dtype == expr.dtype
    np.testing.assert_array_equal(back[3], expr[3])
    want, scale = reference(c, NESTED)
    assert_close_terms(back[3], want[3], scale, rtol_of(back))
    assert_close_terms(back.data.compute(), want, scale, rtol_of(back))
    assert_close_terms(cd.project(back, "std") ** 2, want.var(axis=0), scale**2, rtol_of(back))
