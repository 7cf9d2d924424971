"""Patch masks for CLIP training: which patch tokens of each image to keep.

The public entry point is :func:`keep_indices`. Every strategy is batched
PyTorch code that runs on the device of its input, and all randomness comes
from counter-based hashing (:mod:`pgs_dali.masking.noise`), so a sample's mask
depends only on its pixels, the seed, the epoch and its key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pgs_dali.masking.baselines import (
    block_keep_mask,
    cluster_priority,
    gaussian_priority,
    grid_keep,
    random_priority,
)
from pgs_dali.masking.config import STRATEGIES, MaskConfig
from pgs_dali.masking.features import scaled_edge_scores
from pgs_dali.masking.noise import counter_uniform, sample_key_ids
from pgs_dali.masking.pgs import generate_candidates, select_priority
from pgs_dali.masking.ranking import keep_after_masking

__all__ = [
    "STRATEGIES",
    "MaskConfig",
    "counter_uniform",
    "edge_scores",
    "keep_indices",
    "sample_key_ids",
]


def _check_images(images: object, config: object) -> None:
    if not isinstance(config, MaskConfig):
        raise TypeError(f"config must be a MaskConfig, got {type(config).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape (B, 3, H, W) with RGB channels, got {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    height, width = images.shape[2:]
    config.num_patches(height, width)
    if height < config.edge_scale or width < config.edge_scale:
        raise ValueError(
            f"image size {height}x{width} is smaller than edge_scale {config.edge_scale}"
        )


def _check_finite(images: torch.Tensor) -> None:
    if not images.is_floating_point() or images.numel() == 0:
        return

    # A float32 sum is NaN or infinite whenever an element is, and it costs a
    # fraction of an element-wise test. Only a failed sum runs that test, to
    # tell non-finite values from finite ones too large to sum.
    # NOTE: this reads a value back to the host, a device sync on CUDA.
    if bool(torch.isfinite(images.sum(dtype=torch.float32))):
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    largest = float(images.abs().amax())
    raise ValueError(
        f"images contain values up to {largest:g} in magnitude; expected RGB in [0, 1] or uint8"
    )


def _resolve_key_ids(keys: object, batch: int, device: torch.device) -> torch.Tensor:
    if keys is None:
        return torch.arange(batch, dtype=torch.int64, device=device)
    if isinstance(keys, torch.Tensor):
        if keys.dtype != torch.int64 or keys.ndim != 1:
            raise TypeError(
                f"keys as a tensor must be 1-D int64 sample ids, got {keys.dtype} "
                f"with shape {tuple(keys.shape)}"
            )
        key_ids = keys
    elif isinstance(keys, Sequence):
        key_ids = sample_key_ids(keys)
    else:
        raise TypeError(
            f"keys must be None, a sequence of strings or an int64 tensor, got {type(keys).__name__}"
        )
    if key_ids.shape[0] != batch:
        raise ValueError(f"keys has {key_ids.shape[0]} entries but images has batch size {batch}")
    return key_ids.to(device)


# Size of the float32 patch copy that one CPU chunk of images may take.
_CPU_CHUNK_BYTES = 8 << 20


def _map_chunks(
    compute: Callable[..., tuple[torch.Tensor, ...]],
    patch_size: int,
    images: torch.Tensor,
    *per_image: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Apply ``compute(images, *per_image)`` to chunks of the batch and concatenate its outputs.

    Rows do not depend on the other images of a batch, so chunking changes
    nothing but speed and memory. On the CPU, chunks keep the float copy of
    the pixels near 8 MiB: glibc serves larger blocks with fresh pages each
    time, and for B = 64 at 224 px one 38 MiB copy measured about 4 times
    slower than chunks of 13 images. On other devices the batch runs whole.
    """
    batch = images.shape[0]
    chunk = batch
    if images.device.type == "cpu":
        height, width = images.shape[2:]
        bytes_per_image = 4 * 3 * (height // patch_size) * (width // patch_size) * patch_size**2
        chunk = max(1, _CPU_CHUNK_BYTES // bytes_per_image)
    if chunk >= batch:
        return compute(images, *per_image)

    parts = []
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        parts.append(compute(images[rows], *(tensor[rows] for tensor in per_image)))
    return tuple(torch.cat(outputs) for outputs in zip(*parts))


def _check_epoch(epoch: object) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
    if not 0 <= epoch < 2**64:
        raise ValueError(f"epoch must be in [0, 2**64), got {epoch}")


@torch.no_grad()
def edge_scores(images: torch.Tensor, config: MaskConfig) -> torch.Tensor:
    """Compute the per-patch edge score E_j that PGS steers by.

    The luma ``0.299 R + 0.587 G + 0.114 B`` is average-pooled by
    ``config.edge_scale``, Kornia's normalized Sobel gives the gradient
    magnitude, its mean over each patch is taken, and each image is min-max
    scaled to [0, 1]. An image without edges (constant, say) gives 0
    everywhere.

    Args:
        images: (B, 3, H, W) un-normalized RGB, float in [0, 1] or uint8 in
            [0, 255], on any device; H and W are multiples of
            ``config.patch_size`` and at least ``config.edge_scale``.
        config: the mask settings.

    Returns:
        (B, N) float32 in [0, 1] on ``images.device``, N = (H/p)(W/p),
        row-major over the patch grid.

    Raises:
        TypeError: ``images`` is not a uint8 or floating tensor, or
            ``config`` is not a MaskConfig.
        ValueError: wrong shape, a size not divisible by the patch size, or
            non-finite values.

    Example:
        >>> images = torch.zeros(2, 3, 64, 64)
        >>> images[:, :, 16:48, 16:48] = 1.0
        >>> scores = edge_scores(images, MaskConfig())
        >>> scores.shape
        torch.Size([2, 16])
        >>> scores[0].reshape(4, 4).round(decimals=2)
        tensor([[0.0000, 0.5100, 0.5100, 0.0000],
                [0.5100, 1.0000, 1.0000, 0.5100],
                [0.5100, 1.0000, 1.0000, 0.5100],
                [0.0000, 0.5100, 0.5100, 0.0000]])
    """
    _check_images(images, config)
    _check_finite(images)
    if images.shape[0] == 0:
        num_patches = config.num_patches(*images.shape[2:])
        return torch.zeros(0, num_patches, dtype=torch.float32, device=images.device)

    def scores(chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (scaled_edge_scores(chunk, None, config.patch_size, config.edge_scale),)

    return _map_chunks(scores, config.patch_size, images)[0]


@torch.no_grad()
def keep_indices(
    images: torch.Tensor,
    config: MaskConfig,
    *,
    keys: Sequence[str] | torch.Tensor | None = None,
    epoch: int = 0,
) -> torch.Tensor:
    """Choose the patch tokens to keep for every image of a batch.

    The strategy is ``config.strategy`` (see :class:`MaskConfig`). Every image
    keeps the same number K = ``config.num_kept(H, W)`` of patches, so the
    rows stack. A row depends only on that image's pixels, ``config``,
    ``epoch`` and its key, not on the batch size or its position in the
    batch. The torch global random state is not used.

    The noise is bit-exact on every device. CUDA computes the pixel features
    with other kernels than the CPU, so a patch whose score ties another's to
    within float rounding can resolve differently there.

    Args:
        images: (B, 3, H, W) un-normalized RGB, float in [0, 1] or uint8 in
            [0, 255], on any device; H and W are multiples of
            ``config.patch_size``. Only ``"pgs"`` and ``"cluster"`` read the
            pixels.
        config: the mask settings.
        keys: the sample keys, as B strings or a (B,) int64 tensor of
            :func:`sample_key_ids`. ``None`` uses the position in the batch,
            so the mask then depends on it.
        epoch: training epoch, >= 0; each epoch draws new masks.

    Returns:
        (B, K) int64 on ``images.device``: patch indices, row-major over the
        (H/p) x (W/p) grid (CLS not counted), unique and ascending per row.

    Raises:
        TypeError: an argument has the wrong type, e.g. int16 images or a
            single string as ``keys``.
        ValueError: images not (B, 3, H, W), H or W not a multiple of the
            patch size, NaN or infinite pixels, ``len(keys) != B``, a negative
            epoch, or a mask ratio that keeps no patch.

    Example:
        >>> images = torch.rand(4, 3, 224, 224)
        >>> keep = keep_indices(images, MaskConfig(mask_ratio=0.5), keys=["a", "b", "c", "d"])
        >>> keep.shape, keep.dtype
        (torch.Size([4, 98]), torch.int64)
        >>> bool((keep.diff(dim=1) > 0).all())
        True
        >>> again = keep_indices(images[2:3], MaskConfig(mask_ratio=0.5), keys=["c"])
        >>> torch.equal(again[0], keep[2])
        True
    """
    _check_images(images, config)
    _check_epoch(epoch)
    batch, _, height, width = images.shape
    key_ids = _resolve_key_ids(keys, batch, images.device)
    rows, cols = height // config.patch_size, width // config.patch_size
    num_patches = rows * cols
    num_kept = config.num_kept(height, width)
    if num_kept < 1:
        raise ValueError(
            f"mask_ratio {config.mask_ratio} masks all {num_patches} patches of a "
            f"{height}x{width} image; lower it so at least one patch is kept"
        )
    num_masked = num_patches - num_kept

    _check_finite(images)
    if batch == 0:
        return torch.zeros(0, num_kept, dtype=torch.int64, device=images.device)
    if num_masked == 0:
        all_patches = torch.arange(num_patches, dtype=torch.int64, device=images.device)
        return all_patches.expand(batch, num_patches).clone()

    strategy = config.strategy
    if strategy == "pgs":

        def pixel_steps(chunk: torch.Tensor, chunk_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return generate_candidates(chunk, chunk_ids, config, epoch)

        edges, candidates, similarity = _map_chunks(pixel_steps, config.patch_size, images, key_ids)
        priority = select_priority(edges, candidates, similarity, num_masked, config)
        return keep_after_masking(priority, num_masked)
    if strategy == "cluster":

        def cluster_steps(chunk: torch.Tensor, chunk_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return cluster_priority(chunk, chunk_ids, config, epoch)

        priority, tie_break = _map_chunks(cluster_steps, config.patch_size, images, key_ids)
        return keep_after_masking(priority, num_masked, tie_break)
    if strategy == "random":
        return keep_after_masking(random_priority(key_ids, num_patches, config, epoch), num_masked)
    if strategy == "gaussian":
        return keep_after_masking(gaussian_priority(key_ids, rows, cols, config, epoch), num_masked)
    if strategy == "grid":
        return grid_keep(key_ids, rows, cols, config, epoch)
    if strategy == "block":
        in_block = block_keep_mask(key_ids, rows, cols, num_kept, config, epoch)
        return keep_after_masking((~in_block).to(torch.float32), num_masked)
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
