"""One report across methods: load runs as subjects, measure them on the same images, write.

``dyve report RUN_DIR... --out DIR`` and ``dyve demo`` both go through :func:`report`.
"""

from __future__ import annotations

from dyve.report.collect import Collection, Measured, collect
from dyve.report.page import write
from dyve.report.subjects import Subject, dense_subject, load_run, with_dense

__all__ = [
    "Collection",
    "Measured",
    "Subject",
    "collect",
    "dense_subject",
    "load_run",
    "with_dense",
    "write",
]
