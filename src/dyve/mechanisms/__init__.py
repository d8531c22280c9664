"""Dynamic-inference mechanisms: the interface, the registry, and the built-ins."""

from dyve.mechanisms import block_skip, dyvedeep
from dyve.mechanisms.base import MECHANISMS, Mechanism
from dyve.mechanisms.block_skip import BlockSkip, BlockSkipConfig
from dyve.mechanisms.dyvedeep import DyVEDeep, DyVEDeepConfig

block_skip.register()
dyvedeep.register()

__all__ = ["MECHANISMS", "BlockSkip", "BlockSkipConfig", "DyVEDeep", "DyVEDeepConfig", "Mechanism"]
