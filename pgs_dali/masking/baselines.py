"""Baseline mask strategies with the same contract as PGS.

Each function returns a (B, N) masking priority (the caller masks the M
highest, ties to the lower index), a (B, N) bool mask of kept patches, or the
(B, K) kept indices directly.
"""

from __future__ import annotations

import math

import torch

from pgs_dali.masking.config import MaskConfig
from pgs_dali.masking.features import (
    center_patches_,
    cosine_rows,
    grid_coordinates,
    pixel_scale,
    to_patches,
)
from pgs_dali.masking.noise import (
    STREAM_BLOCK_SHAPE,
    STREAM_CLUSTER_ANCHORS,
    STREAM_CLUSTER_FILL,
    STREAM_GAUSSIAN,
    STREAM_GRID,
    STREAM_RANDOM,
    counter_uniform,
)
from pgs_dali.masking.ranking import order_by_priority


def random_priority(key_ids: torch.Tensor, num_patches: int, config: MaskConfig, epoch: int) -> torch.Tensor:
    """Return a (B, N) float64 uniform priority: M patches masked uniformly at random (FLIP)."""
    return counter_uniform(key_ids, num_patches, seed=config.seed, epoch=epoch, stream=STREAM_RANDOM)


def gaussian_priority(
    key_ids: torch.Tensor, rows: int, cols: int, config: MaskConfig, epoch: int
) -> torch.Tensor:
    """Return the (B, N) float64 priority of centered masking (GLIP).

    The keep score is ``U - (1 - g_j)`` with U uniform in (0, 1) and g_j an
    isotropic Gaussian of standard deviation ``gaussian_sigma`` and peak 1,
    evaluated at the patch centres with the image spanning [-1, 1]^2. The
    priority is the negated keep score, so the M lowest keep scores are masked.
    """
    uniform = counter_uniform(key_ids, rows * cols, seed=config.seed, epoch=epoch, stream=STREAM_GAUSSIAN)
    patch_row, patch_col = grid_coordinates(rows, cols, key_ids.device)
    y = (2 * patch_row + 1).to(torch.float64) / rows - 1.0
    x = (2 * patch_col + 1).to(torch.float64) / cols - 1.0
    prior = torch.exp(-(x * x + y * y) / (2.0 * config.gaussian_sigma**2))
    return (1.0 - prior) - uniform


def cluster_priority(
    images: torch.Tensor, key_ids: torch.Tensor, config: MaskConfig, epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the priority of cluster masking (E-CLIP) and its random tie-break.

    Anchors are max(1, round(cluster_anchor_ratio * N)) patches drawn at
    random. A patch joins the masked clusters when its cosine similarity to
    some anchor exceeds ``cluster_threshold``; anchors always belong to them.
    The count is then fixed at M: cluster members by highest similarity first
    (anchors on top), and the rest filled in random order.

    Args:
        images: (B, 3, H, W) RGB, uint8 or float on the [0, 1] scale.
        key_ids: (B,) int64 sample ids.
        config: the mask settings.
        epoch: epoch of the noise.

    Returns:
        priority: (B, N) float32, +inf for anchors, the similarity for cluster
            members and -inf for the rest.
        tie_break: (B, N) float64 uniforms that order equal priorities.
    """
    patches = to_patches(images, config.patch_size)
    centered, inverse_norm = center_patches_(patches, pixel_scale(images))
    num_patches = centered.shape[1]
    num_anchors = max(1, round(config.cluster_anchor_ratio * num_patches))
    anchor_draw = counter_uniform(
        key_ids, num_patches, seed=config.seed, epoch=epoch, stream=STREAM_CLUSTER_ANCHORS
    )
    anchors = order_by_priority(anchor_draw)[:, :num_anchors]

    similarity = cosine_rows(centered, inverse_norm, anchors).amax(dim=1)
    priority = torch.where(
        similarity > config.cluster_threshold, similarity, torch.full_like(similarity, -math.inf)
    )
    priority = priority.scatter(1, anchors, math.inf)
    tie_break = counter_uniform(key_ids, num_patches, seed=config.seed, epoch=epoch, stream=STREAM_CLUSTER_FILL)
    return priority, tie_break


def grid_keep(key_ids: torch.Tensor, rows: int, cols: int, config: MaskConfig, epoch: int) -> torch.Tensor:
    """Keep one random patch in every 2x2 window of the grid (CLIPA grid masking).

    With an odd number of rows or columns the last windows are 1x2, 2x1 or
    1x1, and the kept patch is drawn among the patches they cover.

    Returns:
        (B, K) int64 ascending indices, K = ceil(rows / 2) * ceil(cols / 2).
    """
    window_rows, window_cols = -(-rows // 2), -(-cols // 2)
    uniform = counter_uniform(
        key_ids, window_rows * window_cols, seed=config.seed, epoch=epoch, stream=STREAM_GRID
    )
    window_row, window_col = grid_coordinates(window_rows, window_cols, key_ids.device)
    height = torch.clamp(rows - 2 * window_row, max=2)
    width = torch.clamp(cols - 2 * window_col, max=2)

    # u * count is exact in float64 (33-bit numerator times a count <= 4), so
    # the floor picks the same cell on every device.
    cell = torch.floor(uniform * (height * width)).to(torch.int64)
    row = 2 * window_row + cell // width
    col = 2 * window_col + cell % width
    return torch.sort(row * cols + col, dim=1).values


def _uniform_int(uniform: torch.Tensor, low, high) -> torch.Tensor:
    """Map uniforms in (0, 1) to integers in [low, high], exactly on every device."""
    return low + torch.floor(uniform * (high - low + 1)).to(torch.int64)


def block_keep_mask(
    key_ids: torch.Tensor, rows: int, cols: int, num_kept: int, config: MaskConfig, epoch: int
) -> torch.Tensor:
    """Build the kept region of CLIPA block masking: one contiguous block of K patches.

    The block is w columns wide and h = ceil(K / w) rows high, at a random
    position. Its h - 1 full rows hold (h - 1) w patches, and the remaining
    K - (h - 1) w patches fill one end row from its left or right end, so the
    region is a w x h rectangle with one end row shortened to give exactly K.
    The width is drawn uniformly among the widths that fit the grid and give
    an aspect ratio between 1/3 and 3 where the grid allows it. The end row
    (top or bottom) and the side it starts from are random.

    Returns:
        (B, N) bool, True for kept patches, K per row.
    """
    uniform = counter_uniform(key_ids, 5, seed=config.seed, epoch=epoch, stream=STREAM_BLOCK_SHAPE)
    narrowest = -(-num_kept // rows)
    widest = min(cols, num_kept)
    low = min(max(math.ceil(math.sqrt(num_kept / 3)), narrowest), widest)
    high = max(min(math.floor(math.sqrt(3 * num_kept)), widest), low)
    width = _uniform_int(uniform[:, 0], low, high)
    height = -torch.div(-num_kept, width, rounding_mode="floor")
    last_row_length = num_kept - (height - 1) * width
    top = _uniform_int(uniform[:, 1], 0, rows - height)
    left = _uniform_int(uniform[:, 2], 0, cols - width)
    short_row_at_bottom = uniform[:, 3] < 0.5
    short_row_from_left = uniform[:, 4] < 0.5

    short_row = torch.where(short_row_at_bottom, top + height - 1, top)
    short_left = torch.where(short_row_from_left, left, left + width - last_row_length)
    first_full_row = torch.where(short_row_at_bottom, top, top + 1)

    patch_row, patch_col = grid_coordinates(rows, cols, key_ids.device)
    patch_row, patch_col = patch_row[None, :], patch_col[None, :]
    in_full_rows = (
        (patch_row >= first_full_row[:, None])
        & (patch_row < (first_full_row + height - 1)[:, None])
        & (patch_col >= left[:, None])
        & (patch_col < (left + width)[:, None])
    )
    in_short_row = (
        (patch_row == short_row[:, None])
        & (patch_col >= short_left[:, None])
        & (patch_col < (short_left + last_row_length)[:, None])
    )
    return in_full_rows | in_short_row
