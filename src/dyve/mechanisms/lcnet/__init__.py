"""LC-Net (learned layer and channel skipping with scaling) and the ConvNet-AIG baseline."""

from dyve.mechanisms.lcnet.mechanism import AIGConfig, ConvNetAIG, LCNet, LCNetConfig, register

__all__ = ["AIGConfig", "ConvNetAIG", "LCNet", "LCNetConfig", "register"]
