"""Dynamic-inference mechanisms: the interface, the registry, and the built-ins."""

from dyve.mechanisms import block_skip, dyvedeep
from dyve.mechanisms.adaptive import early_exit
from dyve.mechanisms.adaptive.early_exit import EarlyExit, EarlyExitConfig
from dyve.mechanisms.base import MECHANISMS, Mechanism
from dyve.mechanisms.block_skip import BlockSkip, BlockSkipConfig
from dyve.mechanisms.dyvedeep import DyVEDeep, DyVEDeepConfig

block_skip.register()
dyvedeep.register()
early_exit.register()

__all__ = [
    "MECHANISMS",
    "BlockSkip",
    "BlockSkipConfig",
    "DyVEDeep",
    "DyVEDeepConfig",
    "EarlyExit",
    "EarlyExitConfig",
    "Mechanism",
]
