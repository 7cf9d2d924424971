"""WebDataset shards: writing them, expanding path patterns, DALI index files.

``ShardWriter`` writes shards with their index files, ``expand_shard_paths``
turns a list, glob or brace pattern into shard paths, ``ensure_index``
returns an up-to-date index (with the samples it leaves out) for any shard,
and ``check_image`` tells cheaply whether DALI can decode an image.
"""

from __future__ import annotations

from pgs_dali.shards.index import (
    DEFAULT_EXTENSIONS,
    ExcludedItem,
    IndexResult,
    build_index,
    ensure_index,
    read_index,
)
from pgs_dali.shards.paths import expand_shard_paths
from pgs_dali.shards.validate import DEFAULT_MAX_PIXELS, check_image, decode_check
from pgs_dali.shards.verify import ShardReport, verify_shards
from pgs_dali.shards.writer import ShardWriter

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ExcludedItem",
    "IndexResult",
    "ShardReport",
    "ShardWriter",
    "build_index",
    "check_image",
    "decode_check",
    "ensure_index",
    "expand_shard_paths",
    "read_index",
    "verify_shards",
]
