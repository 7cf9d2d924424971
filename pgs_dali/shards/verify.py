"""Verification of shards: decode every sample, index only the good ones, report.

``pgs-dali index --verify`` runs :func:`verify_shards`. Unlike the per-sample
check in the loader, it decodes every image completely with Pillow and
checks every caption, so bad samples are left out of the index before
training starts, and the report lists each of them with its reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgs_dali.shards.index import (
    CAPTION_EXTENSIONS,
    DEFAULT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ExcludedItem,
    IndexResult,
    build_index,
    normalize_extensions,
    store_index,
)
from pgs_dali.shards.validate import DEFAULT_MAX_PIXELS, decode_check, reason_category

logger = logging.getLogger(__name__)


def check_caption(data: bytes) -> str | None:
    """Return None for a usable caption, else the reason it is not.

    A caption must be valid UTF-8 and contain more than whitespace; length
    is not limited (the tokenizer truncates).

    Example:
        >>> check_caption("a dog on a beach".encode()) is None
        True
        >>> check_caption(b" \\n")
        'empty caption'
        >>> check_caption(b"\\xff\\xfe")
        'caption not valid UTF-8'
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "caption not valid UTF-8"
    if not text.strip():
        return "empty caption"
    return None


@dataclasses.dataclass
class ShardReport:
    """Indexing or verification results of several shards.

    Attributes:
        results: one result per shard, in the order given.
        verified: True when the samples were decode-checked.
        max_pixels: the pixel limit of the decode check.
    """

    results: list[IndexResult]
    verified: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @property
    def samples_kept(self) -> int:
        """Total number of samples in the indexes."""
        return sum(result.num_samples for result in self.results)

    def totals_by_reason(self) -> dict[str, int]:
        """Count the excluded items of all shards per reason category, largest first."""
        counts: dict[str, int] = {}
        for result in self.results:
            for item in result.excluded:
                category = reason_category(item.reason)
                counts[category] = counts.get(category, 0) + 1
        return dict(sorted(counts.items(), key=lambda entry: (-entry[1], entry[0])))

    def to_dict(self) -> dict:
        """Return the report as a JSON-serializable mapping."""
        return {
            "verified": self.verified,
            "max_pixels": self.max_pixels if self.verified else None,
            "num_shards": len(self.results),
            "samples_kept": self.samples_kept,
            "excluded_total": sum(len(result.excluded) for result in self.results),
            "totals_by_reason": self.totals_by_reason(),
            "shards": [
                {
                    "shard": result.shard,
                    "index": result.index_path,
                    "samples_kept": result.num_samples,
                    "stats_known": result.stats_known,
                    "truncated_member": result.truncated_member,
                    "tar_error": result.tar_error,
                    "excluded": [{"key": item.key, "reason": item.reason} for item in result.excluded],
                }
                for result in self.results
            ],
        }

    def summary(self, max_listed: int = 20) -> str:
        """Return a readable summary: totals, reasons, per-shard counts, first exclusions."""
        action = "Verified" if self.verified else "Indexed"
        excluded = [item for result in self.results for item in result.excluded]
        lines = [
            (
                f"{action} {len(self.results)} shard(s): {self.samples_kept} samples kept, "
                f"{len(excluded)} item(s) left out."
            )
        ]
        if self.verified:
            limit = "none" if self.max_pixels is None else f"{self.max_pixels:,}"
            lines.append(f"Every image was decoded (pixel limit: {limit}).")
        totals = self.totals_by_reason()
        if totals:
            lines.append("")
            lines.append("Left out, by reason:")
            width = max(len(reason) for reason in totals)
            lines += [f"  {reason:<{width}}  {count}" for reason, count in totals.items()]

        lines.append("")
        lines.append("Per shard:")
        for result in self.results:
            note = ""
            if result.truncated_member:
                note = f"  (truncated member {result.truncated_member!r})"
            elif result.tar_error:
                note = f"  (tar read error: {result.tar_error})"
            elif not result.stats_known:
                note = "  (existing index without statistics)"
            lines.append(
                f"  {result.shard}: {result.num_samples} kept, {len(result.excluded)} left out"
                f" -> {result.index_path}{note}"
            )

        if excluded:
            lines.append("")
            lines.append(f"Left out (first {min(max_listed, len(excluded))} of {len(excluded)}):")
            for item in excluded[:max_listed]:
                lines.append(f"  {item.shard} {item.key!r}: {item.reason}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the report as JSON to ``path`` and the summary next to it as ``.txt``.

        Returns:
            The JSON and text paths.
        """
        json_path = Path(path)
        text_path = json_path.with_suffix(".txt")
        if text_path == json_path:
            text_path = json_path.with_name(json_path.name + ".txt")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        text_path.write_text(self.summary(max_listed=1_000_000), encoding="utf-8")
        return json_path, text_path


def verify_shard(
    tar_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
) -> IndexResult:
    """Decode-check every sample of a shard and write an index of the good ones.

    Images are checked with :func:`pgs_dali.shards.validate.decode_check` and
    captions with :func:`check_caption`; failing samples join the items the
    index leaves out anyway (see :func:`pgs_dali.shards.index.build_index`).
    The index and its sidecar (marked ``verified``) go next to the shard, or
    into the cache folder when that is not writable, and later calls of
    :func:`pgs_dali.shards.index.ensure_index` reuse them.

    Returns:
        The result, with ``verified=True`` and ``index_path`` set.

    Raises:
        FileNotFoundError: if the shard does not exist.
        OSError: if no index can be written.
    """
    extensions = normalize_extensions(extensions)
    result = build_index(tar_path, extensions)
    image_group = _group_with(extensions, IMAGE_EXTENSIONS)
    caption_group = _group_with(extensions, CAPTION_EXTENSIONS)

    kept = []
    bad: list[ExcludedItem] = []
    with open(result.shard, "rb") as file:
        for sample in result.samples:
            reason = None
            if image_group is not None:
                reason = decode_check(_read(file, sample.component(image_group)), max_pixels)
            if reason is None and caption_group is not None:
                reason = check_caption(_read(file, sample.component(caption_group)))
            if reason is None:
                kept.append(sample)
            else:
                bad.append(ExcludedItem(result.shard, sample.key, reason))
    if bad:
        logger.info("shard %s: %d of %d samples failed verification", result.shard, len(bad), len(result.samples))

    verified = dataclasses.replace(
        result,
        num_samples=len(kept),
        samples=kept,
        excluded=result.excluded + bad,
        verified=True,
        max_pixels=max_pixels,
    )
    store_index(verified, cache_dir)
    return verified


def verify_shards(
    paths: Iterable[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
    workers: int = 1,
    on_done: Callable[[IndexResult], None] | None = None,
) -> ShardReport:
    """Run :func:`verify_shard` on several shards, ``workers`` at a time.

    Args:
        paths: the shards.
        cache_dir: cache folder for indexes of read-only shards.
        max_pixels: pixel limit of the image check; None for no limit.
        extensions: required components, see
            :func:`pgs_dali.shards.index.build_index`.
        workers: shards verified in parallel (threads; Pillow releases the
            GIL while it decodes).
        on_done: called with each shard's result as it finishes, e.g. to
            advance a progress bar.

    Returns:
        The report, with results in the order of ``paths``.

    Raises:
        ValueError: if ``workers < 1``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    paths = [os.fspath(path) for path in paths]

    def run(path: str) -> IndexResult:
        result = verify_shard(path, cache_dir=cache_dir, max_pixels=max_pixels, extensions=extensions)
        if on_done is not None:
            on_done(result)
        return result

    # Pillow warns about odd metadata (corrupt EXIF, palette transparency),
    # but only failures matter here. The filter is process-wide, so it is
    # set once in this thread and also covers the worker threads.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if workers == 1:
            results = [run(path) for path in paths]
        else:
            with ThreadPoolExecutor(max_workers=workers) as executor:
                results = list(executor.map(run, paths))
    return ShardReport(results, verified=True, max_pixels=max_pixels)


def _group_with(extensions: tuple[str, ...], wanted: tuple[str, ...]) -> str | None:
    """Return the first ``ext`` entry that accepts one of ``wanted``, or None."""
    for group in extensions:
        if set(group.split(";")) & set(wanted):
            return group
    return None


def _read(file, component) -> bytes:
    file.seek(component.offset)
    return file.read(component.size)
