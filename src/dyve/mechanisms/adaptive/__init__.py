"""Adaptive early exits and network selection (Bolukbasi et al., ICML 2017)."""
