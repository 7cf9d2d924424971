"""pgs_dali: an NVIDIA DALI data loader for CLIP training with PGS patch masks.

The loader reads WebDataset shards, decodes and augments images with DALI, and
computes per-image patch-token keep indices with Patch Generation-to-Selection
(PGS) or a baseline masking strategy. Heavy modules (DALI, open_clip) are
imported on first use, so ``import pgs_dali`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MaskConfig": "pgs_dali.masking.config",
    "keep_indices": "pgs_dali.masking",
    "LoaderConfig": "pgs_dali.loader",
    "PGSLoader": "pgs_dali.loader",
    "build_loader": "pgs_dali.loader",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pgs_dali' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
