"""The package version (single source, read by pyproject via setuptools)."""

__version__ = "0.1.0"
