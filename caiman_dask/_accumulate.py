"""Streaming accumulators: a movie's statistics fed block by block, for online use (CaImAn's
OnACID, a microscope stream) and for loops over a file with the same code.

``acc = cd.accumulate(movie, kinds)`` is a generator, primed: ``acc.send(block)`` folds in
any number of frames and returns the current images. The final images are **bit for bit**
those of :func:`caiman_dask.project` on the whole movie, whatever the block sizes, because
both fold the same units in the same order with the same state objects:

- frames are grouped into canonical blocks (:func:`~._statistics.canonical_frames`, counted
  from the first frame sent) — a movie ``Y + factored`` (residuals, ``raw − rcb``) folds each
  block frame by frame in the fused kernel's :class:`~._moment_kernels.MomentsState` (with
  ``"corr"`` on 2D frames, :class:`~._corr_kernels.CorrMomentsState`; no buffer); a CNMF-E
  ring movie buffers the block's frames and traces for :func:`~._ring_pass.ring_block_stats`;
  other streaming movies reduce each block with :func:`~._streaming.block_stats` (the block's
  frames are buffered until it is complete);
- completed blocks are merged as a binary counter merges them, which is
  :func:`~._statistics.merge_tree`'s order; the open block joins as the last one.

Factored movies (RCM, low-rank RCB and their sums) keep the traces sent (``K × T``, small) and
are projected from the factors at each call, as :func:`caiman_dask.project` does.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._description import Description
from ._frames import Frames, RingOperands, evaluate
from ._index import full_crop
from ._model import CNMFModel
from ._moment_kernels import prepare_moments
from ._movie import Movie, residuals
from ._ring_pass import ring_block_stats, ring_coefficients
from ._statistics import (
    Kind,
    _block_stats,
    _factored_arrays,
    _factored_images,
    _kinds,
    _merge_stats,
    canonical_frames,
    fold_state,
    fused,
    images,
)
from .errors import OptionError, ShapeMismatchError

__all__ = ["Accumulator", "accumulate"]

Block = Any  # an int, an array of frames, a (Y, C[, f]) tuple or a mapping (see send)


class Accumulator(Generator[dict[str, np.ndarray], Block, None]):
    """Running statistics of a movie, fed block by block (see :func:`accumulate`)."""

    def __init__(self, movie: Movie, kinds: Sequence[Kind]) -> None:
        self.movie = movie
        self.kinds = _kinds(kinds)
        self._desc: Description = movie.description
        self._corr = "corr" in self.kinds
        self._engine = Frames(self._desc, movie.dtype)
        self._block = canonical_frames(movie, self._corr)
        self._fused = fused(self._desc, self._corr)
        self._ring = None if self._corr else ring_coefficients(self._desc)
        self.n = 0  #: frames folded so far
        self._stack: list[tuple[int, dict[str, Any]]] = []  # (blocks, merged stats)
        self._open: Any = None  # the open block: a fold state, or its buffered parts
        self._open_n = 0
        self._traces: dict[str, list[np.ndarray]] = {}
        if self._fused:
            full = full_crop(movie.model.dims)
            self._op = prepare_moments(self._engine.footprints(full), self._engine.background(full))

    # ------------------------------------------------------------------ the generator
    def send(self, block: Block) -> dict[str, np.ndarray]:
        """Fold ``block`` in and return the current images ``{kind: image}``.

        ``block`` is one of: an int ``n`` (the model's next ``n`` frames: ``Y`` from its
        file and the traces); an array of frames ``(n, *dims)`` of ``Y`` (traces from the
        model at the current position); a tuple ``(Y, C)`` or ``(Y, C, f)``; a mapping with
        ``"Y"`` and the trace matrices by name (``"C"``, ``"f"``, ``"YrA"``...), each
        ``(K, n)`` over all components — the form for an online run whose traces grow beyond
        the model's. ``None`` folds nothing.
        """
        if block is not None:
            self._update(self._inputs(block))
        return self.result()

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> dict[str, np.ndarray]:
        raise typ if val is None else val

    def result(self) -> dict[str, np.ndarray]:
        """The images of the frames folded so far (fresh arrays)."""
        if self.n == 0:
            raise OptionError("no frames folded yet: send a block of frames first")
        if not self._desc.streaming:
            traces = {k: np.concatenate(v, axis=1) for k, v in self._traces.items()}
            A, C, groups = _factored_arrays(self._desc, traces)
            return _factored_images(self._desc, self.kinds, A, C, groups, self.movie)
        # the counter's subtrees (sizes: the binary digits of the block count, largest first)
        # and the open block, merged from the right: merge_tree's order over all the blocks
        parts = [s for _, s in self._stack]
        if self._open_n:
            parts.append(self._close_stats())
        stats = parts[-1]
        for left in reversed(parts[:-1]):
            stats = _merge_stats(left, stats)
        return images(stats, self.kinds, self.movie)

    # ------------------------------------------------------------------ inputs
    def _inputs(self, block: Block) -> dict[str, np.ndarray]:
        m = self.movie.model
        if isinstance(block, int | np.integer) and not isinstance(block, bool):
            n = int(block)
            t0, t1 = self.n, self.n + n
            if n < 1 or t1 > m.T:
                raise OptionError(
                    f"block={block}: the model has frames {self.n}..{m.T - 1} left; send "
                    "1..{} frames, or the frames themselves".format(m.T - self.n)
                )
            out: dict[str, np.ndarray] = {}
            if self._desc.streaming:
                assert m.movie_source is not None
                out["Y"] = m.movie_source.read((slice(t0, t1),))
            return out | self._model_traces(t0, t1)
        if isinstance(block, Mapping):
            out = {str(k): np.asarray(v) for k, v in block.items()}
        elif isinstance(block, tuple):
            names = ("Y", "C", "f")[: len(block)]
            out = {k: np.asarray(v) for k, v in zip(names, block, strict=True)}
        else:
            out = {"Y": np.asarray(block)}
        n = self._check(out)
        return out | self._model_traces(self.n, self.n + n, skip=out)

    def _model_traces(self, t0: int, t1: int, skip: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """The trace matrices the movie needs for frames ``t0:t1``, from the model (those in
        ``skip`` were sent)."""
        m = self.movie.model
        arrays = {f.traces_name: f.traces for f in self._desc.factors}
        if self._desc.ring:
            arrays["C"] = m.C
        wanted = {k: v for k, v in arrays.items() if k not in set(skip)}
        if t1 > m.T and wanted:
            raise OptionError(
                f"frames {t0}..{t1 - 1} are beyond the model's T={m.T}: send their traces too "
                f"(a mapping with {sorted(wanted)})"
            )
        return {k: np.asarray(v[:, t0:t1].compute(scheduler="sync")) for k, v in wanted.items()}

    def _check(self, block: dict[str, np.ndarray]) -> int:
        m = self.movie.model
        sizes = {}
        if "Y" in block:
            Y = block["Y"]
            if Y.ndim == len(m.dims):
                Y = block["Y"] = Y[None]
            if tuple(Y.shape[1:]) != m.dims:
                raise ShapeMismatchError(
                    f"frames of shape {tuple(Y.shape)} do not fit the model's dims {m.dims}: "
                    "send (n, *dims) frames"
                )
            sizes["Y"] = Y.shape[0]
        elif self._desc.streaming:
            raise OptionError(f"{self.movie.kind} needs the movie's frames: send them as 'Y'")
        for name, x in block.items():
            if name == "Y":
                continue
            if x.ndim != 2:
                raise ShapeMismatchError(f"traces {name!r} must be (K, n), got {x.shape}")
            sizes[name] = x.shape[1]
        if len(set(sizes.values())) > 1:
            raise ShapeMismatchError(f"the block's parts cover different frames: {sizes}")
        if not sizes:
            raise OptionError("the block holds nothing to fold")
        return next(iter(sizes.values()))

    # ------------------------------------------------------------------ folding
    def _update(self, block: dict[str, np.ndarray]) -> None:
        n = next(x.shape[0] if k == "Y" else x.shape[1] for k, x in block.items())
        if not self._desc.streaming:
            for f in self._desc.factors:
                self._traces.setdefault(f.traces_name, []).append(block[f.traces_name])
            self.n += n
            return
        s = 0
        while s < n:  # split at canonical block edges
            take = min(n - s, self._block - self._open_n)
            part = {
                k: (x[s : s + take] if k == "Y" else x[:, s : s + take]) for k, x in block.items()
            }
            self._fold(part, take)
            s += take
            self.n += take
            if self._open_n == self._block:
                self._push(self._close_stats())

    def _fold(self, part: dict[str, np.ndarray], n: int) -> None:
        d = self._desc
        ct = _stack_traces(d, part, n)
        fb = d.background
        ft = None if fb is None else part["f"][fb.columns].T
        if self._fused:
            if self._open is None:
                self._open = fold_state(self._op, self.movie.model.dims, self._corr)
            assert not isinstance(self._open, list)
            Y = part["Y"]
            self._open.update(np.ascontiguousarray(Y).reshape(n, -1), ct, ft)
        else:
            if self._open is None:
                self._open = []
            assert isinstance(self._open, list)
            # a ring-model movie keeps its inputs: its statistics come from the whole block
            keep = (part["Y"], part["C"]) if self._ring else self._frames(part, ct, ft, n)
            self._open.append(keep)
        self._open_n += n

    def _frames(
        self, part: dict[str, np.ndarray], ct: np.ndarray, ft: np.ndarray | None, n: int
    ) -> np.ndarray:
        """The movie's frames of a block, as its dask blocks compute them."""
        e = self._engine
        dims = self.movie.model.dims
        full = full_crop(dims)
        ring = None
        if self._desc.ring:
            r = e.ring
            ring = RingOperands(r.op, r.A, np.ascontiguousarray(part["C"].T, e.dtype))
        out = np.empty((n, int(np.prod(dims))), e.dtype)
        Y = part.get("Y") if self._desc.streaming else None
        evaluate(out, e.plan, e.footprints(full), ct, e.background(full), ft, Y, ring)
        return out.reshape((n, *dims))

    def _close_stats(self) -> dict[str, Any]:
        """The statistics of the open block (kept open: more frames may follow)."""
        dims = self.movie.model.dims
        if self._open is not None and not isinstance(self._open, list):
            with np.errstate(invalid="ignore", over="ignore"):  # (non-finite: reported later)
                result = self._open.result()
            return {
                k: v if k in ("n", "comoment") else np.reshape(v, dims) for k, v in result.items()
            }
        assert isinstance(self._open, list)
        if self._ring:
            Y = np.concatenate([y for y, _ in self._open], axis=0)
            C = np.concatenate([c for _, c in self._open], axis=1)
            with np.errstate(invalid="ignore", over="ignore"):  # (non-finite: reported later)
                return ring_block_stats(Y, self._engine.ring.op, C, [self._ring])[0]
        return _block_stats(np.concatenate(self._open, axis=0), corr=self._corr)

    def _push(self, stats: dict[str, Any]) -> None:
        """A completed block onto the binary counter (equal subtrees merged at once)."""
        self._open, self._open_n = None, 0
        self._stack.append((1, stats))
        while len(self._stack) > 1 and self._stack[-1][0] == self._stack[-2][0]:
            (k, a), (_, b) = self._stack[-2], self._stack[-1]
            self._stack[-2:] = [(2 * k, _merge_stats(a, b))]


def _stack_traces(desc: Description, part: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """The block's traces ``(n, K_sel)`` of the factors the kernels apply."""
    rows = [part[f.traces_name][f.columns] for f in desc.kernel_footprints]
    return np.concatenate(rows, axis=0).T if rows else np.zeros((n, 0))


def accumulate(
    movie_or_model: Movie | CNMFModel,
    kinds: Kind | Iterable[Kind] = ("mean", "std", "min", "max"),
) -> Accumulator:
    """Statistics of a movie fed block by block: a primed generator.

    Parameters
    ----------
    movie_or_model
        A lazy movie (any: ``cd.residuals(m)``, ``cd.raw(m) - cd.rcb(m)``, ``cd.rcm(m)``...),
        or a model (its residuals).
    kinds
        The images to keep: ``"mean"``, ``"std"``, ``"min"``, ``"max"``, ``"corr"``.

    Returns
    -------
    Accumulator
        ``acc.send(block)`` folds a block in and returns ``{kind: image}`` (see
        :meth:`Accumulator.send` for the forms a block takes); ``acc.result()`` gives the same
        without folding; ``acc.n`` counts the frames folded.

    Notes
    -----
    Once every frame of the movie has been sent, in any block sizes, the images are bit for
    bit those of ``cd.project(movie, kinds)``. Memory: the running statistics, plus the frames
    of one canonical block for movies that are not ``Y + factored`` or with ``"corr"``
    (about 64 MiB), plus the traces sent for factored movies.

    Examples
    --------
    >>> import caiman_dask as cd
    >>> m = cd.synthetic(dims=(24, 30), T=90, K=5, seed=1)
    >>> acc = cd.accumulate(cd.residuals(m), ["mean", "max"])
    >>> for n in (40, 40, 10):
    ...     images = acc.send(n)
    >>> import numpy as np
    >>> bool(np.array_equal(images["max"], cd.project(cd.residuals(m), "max")))
    True
    """
    movie = residuals(movie_or_model) if isinstance(movie_or_model, CNMFModel) else movie_or_model
    if not isinstance(movie, Movie):
        raise OptionError(
            f"accumulate() takes a caiman_dask movie or model, got {type(movie).__name__}"
        )
    return Accumulator(movie, _kinds(kinds))
