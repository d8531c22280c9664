"""Evaluation: accuracy, run directories, latency, sweeps and trade-off curves.

Example:
    >>> from dyve.eval.evaluate import evaluate
    >>> from dyve.eval.sweep import sweep
"""
