"""Dynamic-inference mechanisms: the interface, the registry, and the built-ins."""

from dyve.mechanisms import block_skip, d2nn, dyvedeep, lcnet
from dyve.mechanisms.adaptive import early_exit
from dyve.mechanisms.adaptive.early_exit import EarlyExit, EarlyExitConfig
from dyve.mechanisms.base import MECHANISMS, Mechanism
from dyve.mechanisms.block_skip import BlockSkip, BlockSkipConfig
from dyve.mechanisms.d2nn import D2NN, D2NNConfig
from dyve.mechanisms.dyvedeep import DyVEDeep, DyVEDeepConfig
from dyve.mechanisms.lcnet import AIGConfig, ConvNetAIG, LCNet, LCNetConfig, SkipNetStyle

block_skip.register()
d2nn.register()
dyvedeep.register()
early_exit.register()
lcnet.register()

__all__ = [
    "D2NN",
    "MECHANISMS",
    "AIGConfig",
    "BlockSkip",
    "BlockSkipConfig",
    "ConvNetAIG",
    "D2NNConfig",
    "DyVEDeep",
    "DyVEDeepConfig",
    "EarlyExit",
    "EarlyExitConfig",
    "LCNet",
    "LCNetConfig",
    "Mechanism",
    "SkipNetStyle",
]
