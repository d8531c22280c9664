"""LC-Net (learned layer and channel skipping with scaling) and the ConvNet-AIG and
SkipNet-style baselines."""

from dyve.mechanisms.lcnet.mechanism import (
    AIGConfig,
    ConvNetAIG,
    LCNet,
    LCNetConfig,
    SkipNetStyle,
    register,
)

__all__ = ["AIGConfig", "ConvNetAIG", "LCNet", "LCNetConfig", "SkipNetStyle", "register"]
