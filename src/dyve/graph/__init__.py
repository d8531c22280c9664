"""Structure discovery: sites, residual blocks, stages and exit points of any model."""

from dyve.graph.blocks import Block, BlockGraph, Site, Stage
from dyve.graph.discover import call_model, discover, first_tensor
from dyve.graph.fold import fold_bn, tuned_eager, tuned_input

__all__ = [
    "Block",
    "BlockGraph",
    "Site",
    "Stage",
    "call_model",
    "discover",
    "first_tensor",
    "fold_bn",
    "tuned_eager",
    "tuned_input",
]
