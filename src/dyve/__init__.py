"""dyve: input-adaptive inference for PyTorch CNNs.

A trained network spends effort only where the input needs it. This package holds the
shared core (data, model zoo, cost counting, evaluation runs) and the methods built on it.

Example:
    >>> import dyve
    >>> net = dyve.models.create("resnet20_cifar", pretrained=True)  # doctest: +SKIP
"""

from dyve import cost, data, dynamic, graph, mechanisms, models
from dyve.dynamic import DynamicNet, equip
from dyve.graph import discover
from dyve.version import __version__

__all__ = [
    "DynamicNet",
    "__version__",
    "cost",
    "data",
    "discover",
    "dynamic",
    "equip",
    "graph",
    "mechanisms",
    "models",
]
