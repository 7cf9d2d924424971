"""Connections to training code: token gathering and the open_clip drop-in.

``pgs_dali.integrations.tokens`` needs only torch. The open_clip names are
imported on first use, so importing this package does not import open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

from pgs_dali.integrations.tokens import (
    ImagesWithKeepIndices,
    gather_tokens,
    get_keep_indices,
    with_keep_indices,
)

_OPEN_CLIP_EXPORTS = ("PGSPatchDropout", "add_pgs_args", "get_data", "install_pgs")

__all__ = [
    "ImagesWithKeepIndices",
    "gather_tokens",
    "get_keep_indices",
    "with_keep_indices",
    *_OPEN_CLIP_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name in _OPEN_CLIP_EXPORTS:
        return getattr(importlib.import_module("pgs_dali.integrations.open_clip"), name)
    raise AttributeError(f"module 'pgs_dali.integrations' has no attribute {name!r}")
