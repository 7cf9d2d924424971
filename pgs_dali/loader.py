"""The PGS loader: a DALI pipeline plus re-batching, masking and tokenization.

:func:`build_loader` returns a :class:`PGSLoader`. Iterating it yields one
epoch of batches, each a dict with

- ``image``: (B, 3, H, W) float32 (or the configured dtype), CLIP-normalized,
  on the loader's device;
- ``text``: (B, T) int64 token ids (T = 77 for CLIP), on the loader's device;
- ``keep_indices``: (B, K) int64, ascending patch-token indices to keep;
- ``key``: list of B sample keys (``"<shard name>/<sample key>"``);
- ``padded``: (B,) bool, True for rows that repeat a sample to fill the last
  batch (only with ``last_batch="pad"``).

Samples that cannot be used (undecodable image, missing or empty caption, ...)
are skipped and counted by reason, or raise :class:`BadSampleError`, as
``LoaderConfig.on_error`` selects. Every other sample of the rank's part of the
data is delivered exactly once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from pgs_dali.masking.config import MaskConfig
from pgs_dali.pipeline import (
    RESIZE_FILTERS,
    STATUS_OK,
    PipelineSpec,
    SampleValidator,
    build_pipeline,
    parse_source_info,
)
from pgs_dali.shards.validate import reason_category
from pgs_dali.tokenizer import open_clip_tokenizer, tokenize

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 8192 * 8192
_ON_ERROR = ("skip", "raise")
_LAST_BATCH = ("partial", "drop", "pad")
_IMAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STATE_VERSION = 1
# Strategies whose masks depend on pixel values; the pipeline also outputs the
# uint8 crop for them, so the mask op needs no un-normalizing pass.
PIXEL_STRATEGIES = frozenset({"pgs", "cluster"})
# The summary lists at most this many skipped samples by shard and key.
_MAX_LISTED_SKIPS = 1000


class BadSampleError(ValueError):
    """A sample cannot be used and the loader's policy is ``on_error="raise"``."""

    def __init__(self, shard: str, key: str, reason: str) -> None:
        super().__init__(f"bad sample in shard {shard}, key {key!r}: {reason}")
        self.shard = shard
        self.key = key
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Settings of :func:`build_loader`.

    Attributes:
        data: shards as a list of paths, a glob (``"shards/*.tar"``), brace
            notation (``"shards/{000000..000009}.tar"``) or ``::``-joined paths.
        batch_size: B, samples per batch on each rank.
        image_size: output side in pixels (square); must be a multiple of
            ``mask.patch_size``.
        mean, std: per-channel normalization of RGB values in [0, 1].
        crop_scale: area range of the random resized crop, as a fraction of
            the image (open_clip uses (0.9, 1.0)).
        crop_ratio: aspect-ratio range of the random resized crop.
        horizontal_flip: flip half of the images left to right.
        resize_filter: antialiased filter that shrinks the crop to
            ``image_size``: ``"linear"`` (triangle filter) or ``"cubic"`` (what
            open_clip's bicubic resize uses). On the CPU, DALI's cubic
            downscaling costs about a third of the loader's throughput, so the
            default is linear. Enlarging small crops is always cubic.
        num_threads: DALI CPU threads; ``None`` uses the cores this process may
            run on, divided by the ranks on this machine.
        device: ``"auto"`` (GPU if present, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``. Decoding, augmentation and masking run there.
        shuffle_buffer: samples in the reader's shuffle buffer; 0 reads in
            shard order.
        seed: seed of the reader shuffle and the augmentation.
        rank, world_size: this process's part of the data; ``None`` takes them
            from ``torch.distributed`` when it is initialized, else 0 and 1.
        mask: the patch-mask settings.
        tokenizer: callable ``list[str] -> (B, T)`` tensor; ``None`` uses
            open_clip's CLIP tokenizer (T = 77).
        on_error: ``"skip"`` leaves bad samples out and counts them by reason;
            ``"raise"`` stops with :class:`BadSampleError` naming shard, key
            and reason.
        last_batch: what happens to the last, short batch of an epoch:
            ``"partial"`` yields it as is, ``"drop"`` leaves it out (its
            samples are counted as dropped), ``"pad"`` fills it by repeating
            samples of the epoch (counted as padded, flagged in ``padded``).
            With ``"drop"`` and ``"pad"`` every rank yields the same number of
            batches, as distributed training needs.
        max_pixels: images whose header declares more pixels are rejected
            before decoding; ``None`` disables the limit.
        index_cache_dir: where to write index files when a shard's folder is
            read-only; ``None`` uses ``~/.cache/pgs_dali/index``.
        image_dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        max_caption_chars: captions are cut to this many characters before
            tokenizing (CLIP keeps 77 tokens anyway).
        prefetch_queue_depth: DALI batches prepared ahead.
        check_images: run the cheap header check on every image before
            decoding. Without it, images that break the decoder are still
            skipped, but by restarting the pipeline, which costs more.
    """

    data: str | Sequence[str]
    batch_size: int = 64
    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    resize_filter: str = "linear"
    num_threads: int | None = None
    device: str = "auto"
    shuffle_buffer: int = 1000
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    mask: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = dataclasses.field(
        default=None, compare=False
    )
    on_error: str = "skip"
    last_batch: str = "partial"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    index_cache_dir: str | None = None
    image_dtype: str = "float32"
    max_caption_chars: int = 4096
    prefetch_queue_depth: int = 2
    check_images: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, (list, tuple)):
            if not self.data:
                raise ValueError("data is an empty list; pass shard paths, a glob or a brace pattern")
        elif not isinstance(self.data, (str, os.PathLike)):
            raise TypeError(f"data must be a path, pattern or list of paths, got {type(self.data).__name__}")
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("image_size", self.image_size)
        if not isinstance(self.mask, MaskConfig):
            raise TypeError(f"mask must be a MaskConfig, got {type(self.mask).__name__}")
        if self.image_size % self.mask.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.mask.patch_size}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {value}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        low, high = self.crop_ratio
        if not 0 < low <= high:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if self.resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"resize_filter must be one of {RESIZE_FILTERS}, got {self.resize_filter!r}")
        if self.num_threads is not None:
            _check_positive_int("num_threads", self.num_threads)
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {self.on_error!r}")
        if self.last_batch not in _LAST_BATCH:
            raise ValueError(f"last_batch must be one of {_LAST_BATCH}, got {self.last_batch!r}")
        if self.max_pixels is not None:
            _check_positive_int("max_pixels", self.max_pixels)
        if self.image_dtype not in _IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {tuple(_IMAGE_DTYPES)}, got {self.image_dtype!r}")
        _check_positive_int("max_caption_chars", self.max_caption_chars)
        _check_positive_int("prefetch_queue_depth", self.prefetch_queue_depth)
        if self.tokenizer is not None and not callable(self.tokenizer):
            raise TypeError(f"tokenizer must be callable, got {type(self.tokenizer).__name__}")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("set both rank and world_size, or neither")
        if self.world_size is not None:
            _check_positive_int("world_size", self.world_size)
            if not 0 <= self.rank < self.world_size:
                raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")


def build_loader(config: LoaderConfig) -> PGSLoader:
    """Build a :class:`PGSLoader` for ``config``.

    Index files are built (or read from the cache) here; the DALI pipeline
    starts on the first iteration.
    """
    if not isinstance(config, LoaderConfig):
        raise TypeError(f"config must be a LoaderConfig, got {type(config).__name__}")
    return PGSLoader(config)


class _Images(NamedTuple):
    """Rows of a batch: normalized images, and the uint8 pixels the mask reads."""

    image: torch.Tensor
    pixels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.image)

    def rows(self, index) -> _Images:
        return _Images(self.image[index], None if self.pixels is None else self.pixels[index])

    @staticmethod
    def cat(parts: Sequence[_Images]) -> _Images:
        if len(parts) == 1:
            return parts[0]
        pixels = None if parts[0].pixels is None else torch.cat([p.pixels for p in parts])
        return _Images(torch.cat([p.image for p in parts]), pixels)


@dataclasses.dataclass
class _Buffer:
    """Samples read from the pipeline but not yet delivered."""

    images: list[_Images] = dataclasses.field(default_factory=list)
    captions: list[str] = dataclasses.field(default_factory=list)
    keys: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def extend(self, images: _Images, captions: list[str], keys: list[str]) -> None:
        if keys:
            self.images.append(images)
            self.captions.extend(captions)
            self.keys.extend(keys)

    def take(self, count: int) -> tuple[_Images, list[str], list[str]]:
        images = _Images.cat(self.images)
        taken = (images.rows(slice(None, count)), self.captions[:count], self.keys[:count])
        rest = images.rows(slice(count, None))
        self.images = [rest] if len(rest) else []
        self.captions = self.captions[count:]
        self.keys = self.keys[count:]
        return taken


class PGSLoader:
    """Iterable over batches of one epoch; see the module docstring for batches.

    Use :func:`build_loader` to create one. Each ``for batch in loader`` runs
    one epoch; an epoch left early continues where it stopped on the next
    iteration. :meth:`state_dict` / :meth:`load_state_dict` save and restore
    the position inside an epoch, so a resumed run delivers exactly the
    samples an uninterrupted run would still deliver, in the same order.
    """

    def __init__(self, config: LoaderConfig) -> None:
        from pgs_dali.loader_data import prepare_shards

        self.config = config
        self.device = _resolve_device(config.device)
        self.rank, self.world_size = _resolve_rank(config)
        self._shards = prepare_shards(config)
        self.num_samples = self._shards.num_samples
        if self.num_samples < self.world_size:
            raise ValueError(
                f"{self.num_samples} samples in {len(self._shards.paths)} shards cannot be split "
                f"over {self.world_size} ranks; use more data or fewer ranks"
            )
        self._rank_samples = [
            _rank_share(self.num_samples, rank, self.world_size) for rank in range(self.world_size)
        ]
        self.rank_samples = self._rank_samples[self.rank]
        self.num_batches = self._batches_per_epoch()
        self._runs_per_epoch = math.ceil(self.rank_samples / config.batch_size)

        self._tokenizer = config.tokenizer or open_clip_tokenizer()
        self._validator = SampleValidator(config.max_pixels, check=config.check_images)
        self._mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)
        self._spec = PipelineSpec(
            paths=self._shards.paths,
            index_paths=self._shards.index_paths,
            batch_size=config.batch_size,
            image_size=config.image_size,
            mean=config.mean,
            std=config.std,
            crop_scale=tuple(config.crop_scale),
            crop_ratio=tuple(config.crop_ratio),
            horizontal_flip=config.horizontal_flip,
            resize_filter=config.resize_filter,
            num_threads=config.num_threads or _default_threads(),
            device_id=self.device.index if self.device.type == "cuda" else None,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            shard_id=self.rank,
            num_shards=self.world_size,
            prefetch_queue_depth=config.prefetch_queue_depth,
            emit_pixels=config.mask.strategy in PIXEL_STRATEGIES,
        )

        self._pipe = None
        self._mask_epoch = 0
        self._pass = 0
        self._runs_done = 0
        self._batches_done = 0
        self._buffer = _Buffer()
        self._pad_source: tuple[_Images, list[str], list[str]] | None = None
        # Resume anchor: the pipeline checkpoint taken before the oldest run
        # whose samples are still (partly) in the buffer, with the counters as
        # they were then and how many of its valid samples were delivered since.
        self._anchor: dict[str, Any] | None = None
        self._replay_skip = 0
        self._stats = self._empty_stats()
        self._skip_logged: Counter[str] = Counter()

    # ----------------------------------------------------------------- public

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the masks (the reader's shuffle advances by itself)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._mask_epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._pipe is None:
            self._pipe = build_pipeline(self._spec, self._validator, self._pending_checkpoint())
        return self._iterate_epoch()

    def summary(self) -> dict[str, Any]:
        """Return counters of the current (or last finished) epoch on this rank.

        Keys: ``read`` (samples taken from the shards), ``delivered``,
        ``skipped`` (reason -> count, at run time), ``excluded_by_index``
        (reason -> count for the whole data set, found while indexing),
        ``padded``, ``dropped``, ``batches``, ``rank``, ``world_size``.
        """
        stats = dict(self._stats)
        stats["skipped"] = dict(self._stats["skipped"])
        stats["skipped_samples"] = list(self._stats["skipped_samples"])
        stats["skipped_total"] = sum(stats["skipped"].values())
        stats["excluded_by_index"] = dict(self._shards.excluded_counts)
        stats["excluded_samples"] = list(self._shards.excluded[:1000])
        stats["rank"] = self.rank
        stats["world_size"] = self.world_size
        stats["epoch_samples"] = self.rank_samples
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Return the loader position as a picklable dict (call between batches)."""
        if self._anchor is not None:
            anchor = self._anchor
            checkpoint = anchor["checkpoint"]
            runs_done = anchor["runs_done"]
            stats = anchor["stats"]
            replay_skip = anchor["delivered_since"]
        else:
            if self._pipe is not None:
                checkpoint = self._pipe.checkpoint()
            else:
                checkpoint = getattr(self, "_restored_checkpoint", None)
            runs_done = self._runs_done
            stats = self._stats
            replay_skip = 0
        return {
            "version": _STATE_VERSION,
            "fingerprint": self._fingerprint(),
            "checkpoint": checkpoint,
            "pass": self._pass,
            "runs_done": runs_done,
            "batches_done": self._batches_done,
            "replay_skip": replay_skip,
            "mask_epoch": self._mask_epoch,
            "stats": _copy_stats(stats),
            "quarantine": dict(self._validator.quarantine),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict` (before iterating)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("state is not a pgs_dali loader state (wrong or missing version)")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(
                "state was saved by a loader with other data or settings: "
                f"saved {state['fingerprint']}, current {self._fingerprint()}"
            )
        self._pipe = None
        self._restored_checkpoint = state["checkpoint"]
        self._pass = state["pass"]
        self._runs_done = state["runs_done"]
        self._batches_done = state["batches_done"]
        self._replay_skip = state["replay_skip"]
        self._mask_epoch = state["mask_epoch"]
        self._stats = _copy_stats(state["stats"])
        self._validator.quarantine = dict(state["quarantine"])
        self._buffer = _Buffer()
        self._anchor = None

    # --------------------------------------------------------------- internal

    def _pending_checkpoint(self) -> str | None:
        checkpoint = getattr(self, "_restored_checkpoint", None)
        self._restored_checkpoint = None
        return checkpoint

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "shards": [os.path.basename(p) for p in self._shards.paths],
            "num_samples": self.num_samples,
            "batch_size": self.config.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.config.seed,
            "shuffle_buffer": self.config.shuffle_buffer,
        }

    def _batches_per_epoch(self) -> int:
        batch_size = self.config.batch_size
        if self.config.last_batch == "drop":
            return min(self._rank_samples) // batch_size
        if self.config.last_batch == "pad":
            return math.ceil(max(self._rank_samples) / batch_size)
        return math.ceil(self.rank_samples / batch_size)

    @staticmethod
    def _empty_stats() -> dict[str, Any]:
        return {
            "read": 0,
            "delivered": 0,
            "skipped": Counter(),
            "skipped_samples": [],
            "padded": 0,
            "dropped": 0,
            "batches": 0,
        }

    def _iterate_epoch(self) -> Iterator[dict[str, Any]]:
        # An earlier iteration may have stopped right after the last batch of
        # a pass, before the generator could close it.
        if self._pass_finished():
            self._close_pass()
        if self._runs_done == 0 and self._batches_done == 0 and self._replay_skip == 0:
            self._stats = self._empty_stats()
            self._pad_source = None

        while True:
            with _single_torch_thread(self.device.type == "cpu"):
                batch = self._next_batch()
            if batch is None:
                break
            # Close the pass before handing out its last batch, so a caller
            # that stops after len(loader) batches starts the next epoch cleanly.
            if self._pass_finished():
                self._close_pass()
                yield batch
                return
            yield batch
        if self._pass_finished():
            self._close_pass()

    def _next_batch(self) -> dict[str, Any] | None:
        """Return the next batch of this pass, or None when the pass has no more."""
        batch_size = self.config.batch_size
        policy = self.config.last_batch
        while len(self._buffer) < batch_size and self._runs_done < self._runs_per_epoch:
            self._read_run()
        if policy == "drop" and self._batches_done >= self.num_batches:
            self._drain_pass()
            return None
        if len(self._buffer) >= batch_size:
            batch = self._emit(batch_size)
        elif len(self._buffer) and policy != "drop":
            batch = self._emit(len(self._buffer))
        elif policy == "pad" and self._batches_done < self.num_batches and self._pad_source is not None:
            return self._emit_padding(batch_size)
        else:
            self._drain_pass()
            return None
        if policy == "drop" and self._batches_done >= self.num_batches:
            self._drain_pass()
        return batch

    def _drain_pass(self) -> None:
        """Read what is left of the pass; samples not delivered count as dropped."""
        while self._runs_done < self._runs_per_epoch:
            self._read_run()
        if len(self._buffer):
            self._stats["dropped"] += len(self._buffer)
            self._buffer = _Buffer()
            self._anchor = None

    def _pass_finished(self) -> bool:
        if self._runs_done < self._runs_per_epoch or len(self._buffer):
            return False
        pending_padding = (
            self.config.last_batch == "pad"
            and self._batches_done < self.num_batches
            and self._pad_source is not None
        )
        return not pending_padding

    def _close_pass(self) -> None:
        self._log_epoch_end()
        self._pass += 1
        self._runs_done = 0
        self._batches_done = 0
        self._anchor = None

    def _read_run(self) -> None:
        """Run the pipeline once and move its usable samples into the buffer."""
        checkpoint = self._pipe.checkpoint()
        if not len(self._buffer):
            self._anchor = {
                "checkpoint": checkpoint,
                "runs_done": self._runs_done,
                "stats": _copy_stats(self._stats),
                "delivered_since": self._replay_skip,
            }
        outputs = self._run_pipeline(checkpoint)
        images, captions, source_infos, status = outputs[:4]
        pixels = outputs[4] if len(outputs) > 4 else None

        # The reader pads this rank's last run by repeating its last sample.
        real = min(self.config.batch_size, self.rank_samples - self._runs_done * self.config.batch_size)
        self._runs_done += 1
        status = np.asarray(status.as_tensor()).reshape(-1)
        keep_rows: list[int] = []
        kept_captions: list[str] = []
        kept_keys: list[str] = []
        for row in range(real):
            info = np.asarray(source_infos[row]).tobytes().decode("utf-8", errors="replace")
            shard, key = parse_source_info(info)
            self._stats["read"] += 1
            if status[row] != STATUS_OK:
                self._skip(shard, key, self._validator.pop_reason(info))
                continue
            caption, reason = self._decode_caption(np.asarray(captions[row]).tobytes())
            if reason is not None:
                self._skip(shard, key, reason)
                continue
            if self._replay_skip:
                # Delivered before the state was saved: read again only to
                # restore the pipeline position.
                self._replay_skip -= 1
                self._stats["delivered"] += 1
                continue
            keep_rows.append(row)
            kept_captions.append(caption)
            kept_keys.append(f"{_shard_name(shard)}/{key}")
        if keep_rows:
            tensor = self._to_torch(images)
            rows = torch.tensor(keep_rows, device=tensor.device)
            selected = _Images(
                tensor.index_select(0, rows),
                None if pixels is None else self._to_torch(pixels).index_select(0, rows),
            )
            self._buffer.extend(selected, kept_captions, kept_keys)
        if not len(self._buffer):
            self._anchor = None

    def _run_pipeline(self, checkpoint: str):
        """Run the pipeline; on a decoder failure skip that sample and run again."""
        while True:
            try:
                return self._pipe.run()
            except RuntimeError as error:
                info = _failed_sample(str(error))
                if info is None or info in self._validator.quarantine:
                    raise RuntimeError(f"DALI pipeline failed: {error}") from error
                shard, key = parse_source_info(info)
                reason = "decode failed"
                if self.config.on_error == "raise":
                    raise BadSampleError(shard, key, reason) from error
                logger.info("decoder failed on %s (key %s); restarting the pipeline without it", shard, key)
                self._validator.quarantine[info] = reason
                self._pipe = build_pipeline(self._spec, self._validator, checkpoint)

    def _decode_caption(self, raw: bytes) -> tuple[str, str | None]:
        if not raw:
            return "", "missing caption"
        try:
            caption = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "", "caption not valid UTF-8"
        if not caption.strip():
            return "", "empty caption"
        return caption.strip()[: self.config.max_caption_chars], None

    def _skip(self, shard: str, key: str, reason: str) -> None:
        if self.config.on_error == "raise":
            raise BadSampleError(shard, key, reason)
        category = reason_category(reason)
        self._stats["skipped"][category] += 1
        if len(self._stats["skipped_samples"]) < _MAX_LISTED_SKIPS:
            self._stats["skipped_samples"].append({"shard": shard, "key": key, "reason": reason})
        self._skip_logged[category] += 1
        count = self._skip_logged[category]
        # Log the 1st, 10th, 100th, ... sample skipped for each reason.
        if math.log10(count).is_integer():
            logger.warning(
                "skipped sample %r in %s: %s (%d skipped for this reason so far)",
                key, shard, reason, count,
            )

    def _to_torch(self, images) -> torch.Tensor:
        if self.device.type == "cuda":
            # NOTE: this branch has not run on a GPU yet; benchmarks/gpu_check.sh
            # compares its keep indices with the CPU path.
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dense = images.as_tensor()
            dtype = torch.uint8 if np.dtype(dense.dtype) == np.uint8 else torch.float32
            out = torch.empty(dense.shape(), dtype=dtype, device=self.device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
            return out
        # NOTE: DALI reuses its output buffers on the next run, so the caller
        # copies (index_select) before running the pipeline again.
        return torch.from_dlpack(images.as_tensor())

    def _emit(self, count: int) -> dict[str, Any]:
        images, captions, keys = self._buffer.take(count)
        if self._anchor is not None:
            self._anchor["delivered_since"] += count
        if not len(self._buffer):
            self._anchor = None
        self._stats["delivered"] += count
        if self.config.last_batch == "pad":
            self._pad_source = (images, captions, keys)
        return self._finish_batch(images, captions, keys, padded=torch.zeros(count, dtype=torch.bool))

    def _emit_padding(self, batch_size: int) -> dict[str, Any]:
        images, captions, keys = self._pad_source
        rows = [i % len(keys) for i in range(batch_size)]
        self._stats["padded"] += batch_size
        return self._finish_batch(
            images.rows(rows), [captions[i] for i in rows], [keys[i] for i in rows],
            padded=torch.ones(batch_size, dtype=torch.bool),
        )

    def _finish_batch(self, images, captions, keys, padded) -> dict[str, Any]:
        from pgs_dali.masking import keep_indices

        short = self.config.batch_size - len(keys)
        if short and self.config.last_batch == "pad" and self._pad_source is not None:
            # Fill the last short batch with earlier samples of the epoch.
            source_images, source_captions, source_keys = self._pad_source
            rows = [i % len(source_keys) for i in range(short)]
            images = _Images.cat([images, source_images.rows(rows)])
            captions = captions + [source_captions[i] for i in rows]
            keys = keys + [source_keys[i] for i in rows]
            padded = torch.cat([padded, torch.ones(short, dtype=torch.bool)])
            self._stats["padded"] += short

        # Strategies that ignore pixel values get the normalized images, which
        # have the right shape; the others read the pipeline's uint8 pixels.
        pixels = images.pixels if images.pixels is not None else images.image
        keep = keep_indices(pixels, self.config.mask, keys=keys, epoch=self._mask_epoch)
        text = tokenize(self._tokenizer, captions)
        self._batches_done += 1
        self._stats["batches"] += 1
        return {
            "image": images.image.to(_IMAGE_DTYPES[self.config.image_dtype]),
            "text": text.to(self.device, non_blocking=True),
            "keep_indices": keep,
            "key": keys,
            "padded": padded.to(self.device),
        }

    def _log_epoch_end(self) -> None:
        stats = self._stats
        logger.info(
            "epoch pass %d on rank %d/%d: read %d, delivered %d, skipped %d %s, padded %d, dropped %d",
            self._pass, self.rank, self.world_size, stats["read"], stats["delivered"],
            sum(stats["skipped"].values()), dict(stats["skipped"]), stats["padded"], stats["dropped"],
        )


# ------------------------------------------------------------------- helpers

_FAILED_SAMPLE = re.compile(r"Failed to decode sample #\d+\s*:\s*(.+?)\s*$", re.MULTILINE)


def _failed_sample(message: str) -> str | None:
    """Return the DALI source info of the sample named in a decoder error."""
    match = _FAILED_SAMPLE.search(message)
    return match.group(1) if match else None


def _shard_name(path: str) -> str:
    name = os.path.basename(path)
    return name[:-4] if name.endswith(".tar") else name


def _copy_stats(stats: dict[str, Any]) -> dict[str, Any]:
    copied = dict(stats)
    copied["skipped"] = Counter(stats["skipped"])
    copied["skipped_samples"] = list(stats["skipped_samples"])
    return copied


@contextlib.contextmanager
def _single_torch_thread(enabled: bool) -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block, then restore the count.

    NOTE: on the CPU, DALI's decoding threads already occupy the cores while
    the loader copies batches and runs the mask op. Torch's OpenMP threads
    competing with them cost 17-27% of loader throughput with PGS
    (benchmarks/bench_loader.py on a 2-core machine, see BENCHMARKS.md).
    """
    if not enabled:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _rank_share(total: int, rank: int, world_size: int) -> int:
    """Samples DALI's reader gives ``rank`` of ``world_size`` (contiguous split)."""
    return total * (rank + 1) // world_size - total * rank // world_size


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
            return torch.device("cuda", local_rank)
        logger.info("no CUDA device found; the loader runs on the CPU")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


def _resolve_rank(config: LoaderConfig) -> tuple[int, int]:
    if config.world_size is not None:
        return config.rank, config.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(local_ranks, 1))
