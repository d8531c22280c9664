"""D2NN (Liu & Deng): graphs of modules with Q-learned controllers (``docs/methods/d2nn.md``)."""

from dyve.mechanisms.d2nn.combine import Combine, Concat, Last, Place, Sum
from dyve.mechanisms.d2nn.graph import Edge, GraphError, GraphSpec
from dyve.mechanisms.d2nn.mechanism import D2NN, D2NNConfig, register
from dyve.mechanisms.d2nn.module import D2Graph

__all__ = [
    "D2NN",
    "Combine",
    "Concat",
    "D2Graph",
    "D2NNConfig",
    "Edge",
    "GraphError",
    "GraphSpec",
    "Last",
    "Place",
    "Sum",
    "register",
]
