"""Sparse matrices in any of the forms the readers and the model hold them, as scipy CSC."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

__all__ = ["sparse_to_scipy"]


def sparse_to_scipy(x: Any) -> scipy.sparse.csc_matrix:
    """A pydata-sparse, scipy-sparse or dense 2D array as scipy CSC."""
    if scipy.sparse.issparse(x):
        return scipy.sparse.csc_matrix(x)
    if hasattr(x, "to_scipy_sparse"):
        return scipy.sparse.csc_matrix(x.to_scipy_sparse())
    return scipy.sparse.csc_matrix(np.asarray(x))
