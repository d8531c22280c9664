"""Structure discovery: sites, residual blocks, stages and exit points of any model."""

from dyve.graph.discover import Block, BlockGraph, Site, Stage, call_model, discover, fold_bn

__all__ = ["Block", "BlockGraph", "Site", "Stage", "call_model", "discover", "fold_bn"]
