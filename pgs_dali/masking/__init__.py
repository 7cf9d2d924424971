"""Patch-mask strategies; the public entry point is ``keep_indices``."""

from pgs_dali.masking.config import STRATEGIES, MaskConfig

__all__ = ["STRATEGIES", "MaskConfig"]
