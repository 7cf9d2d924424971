"""Conversion of image-caption datasets into WebDataset shards (``make-shards``).

Two sources are supported: a COCO captions file with its image folder, and a
CSV or TSV table with an image path column and a caption column (the layout
open_clip's ``--csv-img-key``/``--csv-caption-key`` options read). Images are
stored as their original bytes, never re-encoded, under their own lower-cased
extension, or that of their real format when the name is wrong. Samples
whose image is missing, unreadable or broken are skipped and counted, never
fatal.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pgs_dali.shards.validate import check_image, reason_category, sniff_format
from pgs_dali.shards.writer import ShardWriter

logger = logging.getLogger(__name__)

# Formats the index accepts as images, with the file extensions each may
# keep; the first is used when the file's own extension names another format.
_EXTENSIONS_OF_FORMAT = {"jpeg": ("jpg", "jpeg"), "png": ("png",), "webp": ("webp",)}


@dataclasses.dataclass(frozen=True)
class SourceSample:
    """One sample to convert: image file, caption, and metadata for ``.json``."""

    key: str
    image_path: Path
    caption: str
    metadata: dict


@dataclasses.dataclass
class ConversionSummary:
    """Result of a conversion: shards written and samples skipped."""

    shards: list[str]
    samples: int
    skipped: dict[str, int]
    skipped_items: list[tuple[str, str]]

    def text(self) -> str:
        """Return a short readable summary."""
        lines = [f"Wrote {self.samples} samples into {len(self.shards)} shard(s)."]
        if self.shards:
            lines.append(f"  first: {self.shards[0]}")
            lines.append(f"  last:  {self.shards[-1]}")
        skipped = sum(self.skipped.values())
        lines.append(f"Skipped {skipped} sample(s).")
        for reason, count in sorted(self.skipped.items(), key=lambda entry: -entry[1]):
            lines.append(f"  {reason}: {count}")
        if self.skipped_items:
            lines.append(f"First skipped ({min(10, skipped)} of {skipped}):")
            for source, reason in self.skipped_items[:10]:
                lines.append(f"  {source}: {reason}")
        return "\n".join(lines) + "\n"


def coco_samples(captions_path: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[SourceSample | tuple[str, str]]:
    """Yield one sample per image of a COCO captions file.

    The caption is the image's first caption in file order; ``metadata``
    contains all captions plus ``image_id``, ``file_name``, ``width`` and
    ``height``. The key is the image id, zero-padded to 12 digits like COCO
    file names. An image without any caption is yielded as a
    ``(file_name, "missing caption")`` pair.

    Raises:
        FileNotFoundError: if the captions file or image folder is missing.
        ValueError: if the file is not a COCO captions file.
    """
    captions_path = Path(captions_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {os.fspath(images_dir)!r}")
    with open(captions_path, encoding="utf-8") as file:
        coco = json.load(file)
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise ValueError(
            f"{os.fspath(captions_path)!r} is not a COCO captions file: "
            "expected a JSON object with 'images' and 'annotations'"
        )

    captions: dict[int, list[str]] = {}
    for annotation in coco["annotations"]:
        if "caption" not in annotation:
            raise ValueError(
                f"{os.fspath(captions_path)!r} has annotations without 'caption': "
                "pass a captions file (captions_*.json), not an instances file"
            )
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())

    for image in coco["images"]:
        image_captions = captions.get(image["id"], [])
        if not image_captions:
            yield image["file_name"], "missing caption"
            continue
        yield SourceSample(
            key=f"{int(image['id']):012d}",
            image_path=images_dir / image["file_name"],
            caption=image_captions[0],
            metadata={
                "image_id": image["id"],
                "file_name": image["file_name"],
                "width": image.get("width"),
                "height": image.get("height"),
                "captions": image_captions,
            },
        )


def csv_samples(
    csv_path: str | os.PathLike,
    image_key: str = "filepath",
    caption_key: str = "title",
    separator: str | None = None,
) -> Iterator[SourceSample | tuple[str, str]]:
    """Yield one sample per row of a CSV or TSV table.

    Image paths are relative to the table's folder unless absolute. The key
    is the row number (from 0), zero-padded to 9 digits; ``metadata`` contains
    the row's columns and ``row``. A row without a caption is yielded as a
    ``(row description, "empty caption")`` pair.

    Args:
        csv_path: the table.
        image_key: column with the image paths.
        caption_key: column with the captions.
        separator: column separator; default tab for ``.tsv`` files and
            comma otherwise.

    Raises:
        FileNotFoundError: if the table is missing.
        ValueError: if a column is missing or the separator is not one character.
    """
    csv_path = Path(csv_path)
    if separator is None:
        separator = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    if len(separator) != 1:
        raise ValueError(f"separator must be one character, got {separator!r}")
    base = csv_path.parent

    with open(csv_path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter=separator, restkey="_extra_values")
        columns = reader.fieldnames or []
        for column, option in ((image_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
            if column not in columns:
                raise ValueError(
                    f"column {column!r} not found in {os.fspath(csv_path)!r}; its columns are "
                    f"{columns} (separator {separator!r}). Set {option} or --csv-separator."
                )
        for row_number, row in enumerate(reader):
            image_value = (row.get(image_key) or "").strip()
            caption = (row.get(caption_key) or "").strip()
            if not image_value:
                yield f"row {row_number}", "missing image path"
                continue
            if not caption:
                yield f"row {row_number} ({image_value})", "empty caption"
                continue
            yield SourceSample(
                key=f"{row_number:09d}",
                image_path=base / image_value,
                caption=caption,
                metadata={"row": row_number, **row},
            )


def write_shards(
    samples: Iterable[SourceSample | tuple[str, str]],
    output_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    prefix: str = "shard-",
    *,
    on_sample: Callable[[], None] | None = None,
) -> ConversionSummary:
    """Write samples from :func:`coco_samples` or :func:`csv_samples` into shards.

    Each sample becomes ``key.<ext>`` (original image bytes; ``ext`` is the
    file's lower-cased extension, or the real format's when the name is
    wrong), ``key.txt``
    (caption) and ``key.json`` (metadata). Skipped, with a reason: items the
    source already rejected, image files that are missing or unreadable, and
    images that fail :func:`pgs_dali.shards.validate.check_image` (without a
    pixel limit) or are in a format the index does not accept as an image.

    Args:
        samples: the source samples.
        output_dir: folder for the shards.
        samples_per_shard: samples per tar.
        prefix: file name prefix of the shards.
        on_sample: called once per source item, e.g. to advance a progress bar.

    Returns:
        The summary of what was written and skipped.
    """
    skipped: dict[str, int] = {}
    skipped_items: list[tuple[str, str]] = []

    def skip(source: str, reason: str) -> None:
        category = reason_category(reason)
        skipped[category] = skipped.get(category, 0) + 1
        skipped_items.append((source, reason))
        logger.info("skipping %s: %s", source, reason)

    with ShardWriter(output_dir, samples_per_shard=samples_per_shard, prefix=prefix) as writer:
        for sample in samples:
            if on_sample is not None:
                on_sample()
            if isinstance(sample, tuple):
                skip(*sample)
                continue
            source = os.fspath(sample.image_path)
            try:
                data = sample.image_path.read_bytes()
            except FileNotFoundError:
                skip(source, "missing image file")
                continue
            except OSError as error:
                skip(source, f"unreadable image file: {error.strerror or error}")
                continue
            reason = check_image(data, max_pixels=None)
            image_format = sniff_format(data)
            if reason is None and image_format not in _EXTENSIONS_OF_FORMAT:
                reason = f"unsupported image format ({image_format.upper()})"
            if reason is not None:
                skip(source, reason)
                continue
            extension = sample.image_path.suffix.lower().lstrip(".")
            if extension not in _EXTENSIONS_OF_FORMAT[image_format]:
                extension = _EXTENSIONS_OF_FORMAT[image_format][0]
            metadata = json.dumps(sample.metadata, ensure_ascii=False, sort_keys=True)
            writer.write(sample.key, {extension: data, "txt": sample.caption, "json": metadata})

    return ConversionSummary(
        shards=list(writer.paths),
        samples=writer.num_samples,
        skipped=skipped,
        skipped_items=skipped_items,
    )
