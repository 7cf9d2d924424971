"""Shard discovery and indexing for the loader."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING

from pgs_dali.shards.index import NON_SAMPLE_REASONS, ensure_index
from pgs_dali.shards.paths import expand_shard_paths
from pgs_dali.shards.validate import reason_category

if TYPE_CHECKING:
    from pgs_dali.loader import LoaderConfig

logger = logging.getLogger(__name__)

# Exclusions that do not drop a sample; they never raise.
_NOT_SAMPLES = NON_SAMPLE_REASONS | {"empty shard"}


@dataclasses.dataclass
class ShardSet:
    """The non-empty shards the reader gets, with what indexing left out."""

    paths: list[str]
    index_paths: list[str]
    samples_per_shard: list[int]
    excluded: list[dict[str, str]]
    excluded_counts: Counter

    @property
    def num_samples(self) -> int:
        return sum(self.samples_per_shard)


def prepare_shards(config: LoaderConfig) -> ShardSet:
    """Expand ``config.data``, build or reuse index files, and drop empty shards.

    With ``on_error="skip"``, a listed shard that does not exist and samples
    the index left out (missing caption, truncated member, ...) are counted;
    with ``"raise"`` they raise FileNotFoundError or BadSampleError.
    """
    from pgs_dali.loader import BadSampleError

    paths, missing = _expand(config.data, config.on_error)
    excluded: list[dict[str, str]] = [
        {"shard": path, "key": "", "reason": "shard not found"} for path in missing
    ]
    kept_paths: list[str] = []
    index_paths: list[str] = []
    counts: list[int] = []
    for path in paths:
        index_path, result = ensure_index(path, cache_dir=config.index_cache_dir)
        for item in result.excluded:
            entry = {"shard": path, "key": item.key, "reason": item.reason}
            if config.on_error == "raise" and item.reason not in _NOT_SAMPLES and not result.verified:
                raise BadSampleError(path, item.key, item.reason)
            excluded.append(entry)
        if result.num_samples == 0:
            logger.warning("shard %s has no usable samples; leaving it out", path)
            excluded.append({"shard": path, "key": "", "reason": "empty shard"})
            continue
        kept_paths.append(path)
        index_paths.append(os.fspath(index_path))
        counts.append(result.num_samples)

    if not kept_paths:
        raise ValueError(
            f"no samples found in {len(paths)} shard(s) from {config.data!r}: "
            "the shards are empty or every sample was left out; run "
            "`pgs-dali index --verify` on them for a report"
        )
    counter = Counter(reason_category(entry["reason"]) for entry in excluded)
    return ShardSet(kept_paths, index_paths, counts, excluded, counter)


def _expand(data, on_error: str) -> tuple[list[str], list[str]]:
    """Expand shard patterns; under the skip policy, missing listed files are returned apart."""
    if isinstance(data, (str, os.PathLike)):
        data = os.fspath(data).split("::")
    if on_error == "raise" or len(data) == 1:
        return expand_shard_paths(list(data)), []
    paths: list[str] = []
    missing: list[str] = []
    for item in data:
        try:
            found = expand_shard_paths(item)
        except FileNotFoundError:
            logger.warning("shard not found, leaving it out: %s", item)
            missing.append(os.fspath(item))
            continue
        paths.extend(p for p in found if p not in paths)
    if not paths:
        raise FileNotFoundError(f"none of the {len(data)} listed shards exists: {list(data)[:5]}")
    return paths, missing
