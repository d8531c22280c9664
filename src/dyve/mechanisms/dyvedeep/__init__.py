"""DyVEDeep: dynamic variable effort on a trained CNN (SPET, SDSS, SFMA), and its calibration."""

from dyve.mechanisms.dyvedeep.mechanism import KNOBS, DyVEDeep, DyVEDeepConfig, register

__all__ = ["KNOBS", "DyVEDeep", "DyVEDeepConfig", "register"]
