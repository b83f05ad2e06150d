"""Projections (placeholder until the exact kernels land)."""

from __future__ import annotations

from typing import Any


def movie_min_max(movie: Any) -> tuple[float, float]:
    d = movie.data
    lo, hi = d.min(), d.max()
    import dask

    lo, hi = dask.compute(lo, hi)
    return float(lo), float(hi)
