"""The DALI pipeline: WebDataset reader, per-sample check, decode and augmentation.

Shape of one pipeline run (batch of B samples)::

    fn.readers.webdataset  -> encoded image bytes, caption bytes
    SampleValidator        -> encoded bytes (bad ones swapped for a placeholder), status
    fn.decoders.image_random_crop ("mixed" on GPU, "cpu" otherwise)
    fn.resize + fn.crop_mirror_normalize -> (B, 3, H, W) float32, CLIP-normalized

The mask op runs after the pipeline, in :mod:`pgs_dali.loader`, on the same
device (see the NOTE there).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
READER_NAME = "reader"

# Filters for shrinking the crop to the output size, by LoaderConfig.resize_filter.
# Enlarging always uses cubic interpolation.
_DOWNSCALE_FILTERS = {
    "linear": lambda types: types.INTERP_LINEAR,
    "cubic": lambda types: types.INTERP_CUBIC,
}
RESIZE_FILTERS = tuple(_DOWNSCALE_FILTERS)

# Status codes of the per-sample check, one int32 per sample.
STATUS_OK = 0
STATUS_BAD = 1


def parse_source_info(source_info: str) -> tuple[str, str]:
    """Split DALI's WebDataset source info into (shard path, sample key).

    DALI reports a sample as ``"<tar path>:<byte offset>:<member name>"``; the
    sample key is the member name without its image extension.

    >>> parse_source_info("/data/shard-000001.tar:1536:000000123.jpg")
    ('/data/shard-000001.tar', '000000123')
    >>> parse_source_info("s.tar:0:a.b.JPG")
    ('s.tar', 'a.b')
    """
    path, _, name = source_info.rsplit(":", 2)
    stem, dot, extension = name.rpartition(".")
    if dot and extension.lower() in IMAGE_EXTENSIONS:
        name = stem
    return path, name


def _placeholder_jpeg() -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (124, 116, 104)).save(buffer, format="JPEG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


class SampleValidator:
    """Per-sample check run inside the pipeline before decoding.

    A sample that fails :func:`pgs_dali.shards.validate.check_image`, or whose
    source info was quarantined after the decoder failed on it, is replaced
    by a small placeholder JPEG and flagged with ``STATUS_BAD``; the loader
    drops flagged samples and reads the reason from :attr:`reasons`.

    DALI calls the instance from its own worker thread, so the shared state is
    guarded by a lock.
    """

    def __init__(self, max_pixels: int | None, check: bool = True) -> None:
        self.max_pixels = max_pixels
        self._check_image = None
        if check:
            from pgs_dali.shards.validate import check_image

            self._check_image = check_image
        self.reasons: dict[str, str] = {}
        self.quarantine: dict[str, str] = {}
        self._lock = threading.Lock()
        self._placeholder = _placeholder_jpeg()
        self._ok = np.array([STATUS_OK], dtype=np.int32)
        self._bad = np.array([STATUS_BAD], dtype=np.int32)

    def __call__(self, encoded: np.ndarray, source_info: np.ndarray):
        info = source_info.tobytes().decode("utf-8", errors="replace")
        with self._lock:
            reason = self.quarantine.get(info)
        if reason is None and self._check_image is not None:
            reason = self._check_image(encoded.tobytes(), self.max_pixels)
        if reason is None:
            return encoded, self._ok
        with self._lock:
            self.reasons[info] = reason
        return self._placeholder, self._bad

    def pop_reason(self, source_info: str) -> str:
        """Return and forget the reason recorded for a flagged sample."""
        with self._lock:
            return self.reasons.pop(source_info, "rejected by the sample check")


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """Everything :func:`build_pipeline` needs; derived from ``LoaderConfig``."""

    paths: Sequence[str]
    index_paths: Sequence[str]
    batch_size: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    horizontal_flip: bool
    resize_filter: str
    num_threads: int
    device_id: int | None
    shuffle_buffer: int
    seed: int
    shard_id: int
    num_shards: int
    prefetch_queue_depth: int
    emit_pixels: bool = False


def build_pipeline(
    spec: PipelineSpec, validator: Callable, checkpoint: str | None = None
):
    """Build (and return) the DALI pipeline described by ``spec``.

    Args:
        spec: pipeline settings.
        validator: the per-sample check (a :class:`SampleValidator`).
        checkpoint: a string from ``Pipeline.checkpoint()`` to restore the
            reader position and the random state from.

    Returns:
        A built ``nvidia.dali.Pipeline`` with four outputs: images (B, 3, H, W)
        float32, caption bytes (variable length uint8), source info bytes, and
        the validator status (B, 1) int32. With ``spec.emit_pixels`` a fifth
        output contains the same crops as (B, 3, H, W) uint8 RGB, before
        normalization.
    """
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = spec.device_id is not None
    image_extensions = ";".join(IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS))

    @pipeline_def(
        batch_size=spec.batch_size,
        num_threads=spec.num_threads,
        device_id=spec.device_id,
        seed=spec.seed,
        prefetch_queue_depth=spec.prefetch_queue_depth,
        enable_checkpointing=True,
    )
    def pipeline():
        encoded, captions = fn.readers.webdataset(
            paths=list(spec.paths),
            index_paths=list(spec.index_paths),
            ext=[image_extensions, CAPTION_EXTENSION],
            missing_component_behavior="empty",
            random_shuffle=spec.shuffle_buffer > 0,
            initial_fill=max(spec.shuffle_buffer, 1),
            pad_last_batch=True,
            # Each rank reads the same part of the data every epoch. Without
            # this, DALI moves ranks to the next part after each pass, although
            # the parts can differ in size by one sample.
            stick_to_shard=True,
            shard_id=spec.shard_id,
            num_shards=spec.num_shards,
            name=READER_NAME,
        )
        source_info = fn.get_property(encoded, key="source_info")
        encoded, status = fn.python_function(
            encoded, source_info, function=validator, num_outputs=2
        )
        # Decoding only the crop window is cheaper than decoding the whole
        # image and cropping afterwards.
        images = fn.decoders.image_random_crop(
            encoded,
            device="mixed" if on_gpu else "cpu",
            output_type=types.RGB,
            random_area=list(spec.crop_scale),
            random_aspect_ratio=list(spec.crop_ratio),
        )
        images = fn.resize(
            images,
            size=[spec.image_size, spec.image_size],
            min_filter=_DOWNSCALE_FILTERS[spec.resize_filter](types),
            mag_filter=types.INTERP_CUBIC,
            antialias=True,
        )
        mirror = fn.random.coin_flip(probability=0.5) if spec.horizontal_flip else 0
        resized = images
        images = fn.crop_mirror_normalize(
            resized,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255.0 * m for m in spec.mean],
            std=[255.0 * s for s in spec.std],
            mirror=mirror,
        )
        if not spec.emit_pixels:
            return images, captions, source_info, status
        pixels = fn.crop_mirror_normalize(
            resized, dtype=types.UINT8, output_layout="CHW", mirror=mirror
        )
        return images, captions, source_info, status, pixels

    pipe = pipeline(checkpoint=checkpoint) if checkpoint is not None else pipeline()
    pipe.build()
    return pipe
