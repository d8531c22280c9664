"""Dynamic-inference mechanisms: the interface, the registry, and the built-ins."""

from dyve.mechanisms import block_skip
from dyve.mechanisms.base import MECHANISMS, Mechanism
from dyve.mechanisms.block_skip import BlockSkip, BlockSkipConfig

block_skip.register()

__all__ = ["MECHANISMS", "BlockSkip", "BlockSkipConfig", "Mechanism"]
