"""The package version (one place: the package, its stores and its command read it)."""

__version__ = "0.1.0"
