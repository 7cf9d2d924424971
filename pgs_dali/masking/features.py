"""Pixel features shared by the strategies: edge scores and patch descriptors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import sobel

# ITU-R BT.601 luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# A patch whose pixel values have a standard deviation below this (on the
# [0, 1] scale) is flat and gets the zero descriptor. It sits far above the
# float32 rounding of a constant patch (about 1e-7) and far below the
# smallest spread of a uint8 patch that is not constant (about 1.4e-4 for one
# value off by 1/255 among 768).
FLAT_PATCH_STD = 1e-5

# Per-image range of the patch edge means below which the image counts as
# having no edges (E = 0 everywhere), so rounding noise is never stretched to
# [0, 1].
MIN_EDGE_RANGE = 1e-6


def pixel_scale(images: torch.Tensor) -> float:
    """Return the factor that maps ``images`` to the [0, 1] scale (1/255 for uint8)."""
    return 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0


def to_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Copy ``images`` into patch-major float32 layout.

    Args:
        images: (B, 3, H, W) uint8 or float; H and W are multiples of p.
        patch_size: p.

    Returns:
        (B, N, 3, p, p) float32, a new tensor on the scale of ``images``
        (0..255 for uint8), patches row-major over the grid.
    """
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size

    # The layout copy comes before the cast, so it moves a quarter of the
    # bytes for uint8 input.
    patches = (
        images.reshape(batch, channels, rows, patch_size, cols, patch_size)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(batch, rows * cols, channels, patch_size, patch_size)
        .to(torch.float32)
    )
    if patches.untyped_storage().data_ptr() == images.untyped_storage().data_ptr():
        patches = patches.clone()
    return patches


def _luma(rgb: torch.Tensor, scale: float) -> torch.Tensor:
    """Return the luma of (..., 3, h, w) float32 RGB as (..., h, w) on the [0, 1] scale."""
    red, green, blue = (weight * scale for weight in LUMA_WEIGHTS)
    luma = rgb[..., 0, :, :] * red
    luma.add_(rgb[..., 1, :, :], alpha=green)
    return luma.add_(rgb[..., 2, :, :], alpha=blue)


def pooled_luma(
    images: torch.Tensor, patches: torch.Tensor | None, patch_size: int, edge_scale: int
) -> torch.Tensor:
    """Compute the luma of ``images`` average-pooled by ``edge_scale``.

    When ``edge_scale`` divides the patch size the luma is computed from
    ``patches``, which saves a float copy of uint8 images. Otherwise it is
    computed from the image, and rows and columns beyond the last whole
    pooling window are dropped.

    Args:
        images: (B, 3, H, W) uint8 or float on the [0, 1] scale.
        patches: (B, N, 3, p, p) from :func:`to_patches`, or None.
        patch_size: p.
        edge_scale: pooling factor s.

    Returns:
        (B, 1, H // s, W // s) float32 luma on the [0, 1] scale.
    """
    # NOTE: element-wise products and average pooling, not a convolution,
    # because cuDNN may run float32 convolutions in TF32 and the masks must
    # not depend on that setting.
    scale = pixel_scale(images)
    if patches is None or patch_size % edge_scale:
        luma = _luma(images.to(torch.float32), scale)
        return F.avg_pool2d(luma[:, None], edge_scale)

    batch, _, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    cells = patch_size // edge_scale
    luma = _luma(patches, scale).reshape(batch, rows * cols, cells, edge_scale, cells, edge_scale)

    # Summing the s x s window as 2 s strided slices measured 1.3 to 4 times
    # faster on the CPU than avg_pool2d over the many small patch maps.
    column_sums = luma[..., 0]
    for offset in range(1, edge_scale):
        column_sums = column_sums + luma[..., offset]
    window_sums = column_sums[..., 0, :]
    for offset in range(1, edge_scale):
        window_sums = window_sums + column_sums[..., offset, :]
    return (
        (window_sums * (1.0 / edge_scale**2))
        .reshape(batch, rows, cols, cells, cells)
        .permute(0, 1, 3, 2, 4)
        .reshape(batch, 1, rows * cells, cols * cells)
    )


def patch_edge_means(luma: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Compute the mean Sobel magnitude of pooled luma over each patch.

    Args:
        luma: (B, 1, h, w) pooled luma from :func:`pooled_luma`.
        rows: patch rows H/p.
        cols: patch columns W/p.

    Returns:
        (B, N) raw edge means, row-major: float64 on CUDA, float32 elsewhere.
    """
    # NOTE: on CUDA the Sobel runs in float64 because cuDNN may run float32
    # convolutions in TF32 (PyTorch's default for cuDNN). The CPU has no TF32,
    # and float32 there measured 2.4 times faster on 112 x 112 pooled maps.
    dtype = torch.float64 if luma.device.type == "cuda" else torch.float32
    magnitude = sobel(luma.to(dtype), normalized=True)

    # Adaptive pooling gives the exact per-patch mean when edge_scale divides
    # the patch size, and overlapping windows that cover each patch otherwise.
    return F.adaptive_avg_pool2d(magnitude, (rows, cols)).reshape(luma.shape[0], rows * cols)


def scaled_edge_scores(
    images: torch.Tensor, patches: torch.Tensor | None, patch_size: int, edge_scale: int
) -> torch.Tensor:
    """Compute E: per-patch mean Sobel magnitude of pooled luma, min-max scaled.

    Args:
        images: (B, 3, H, W) uint8 or float on the [0, 1] scale.
        patches: (B, N, 3, p, p) from :func:`to_patches`, or None to make
            them when the pooled luma is computed from patches.
        patch_size: p.
        edge_scale: luma pooling factor s.

    Returns:
        (B, N) float32 in [0, 1]; 0 everywhere for an image without edges.
    """
    if patches is None and patch_size % edge_scale == 0:
        patches = to_patches(images, patch_size)
    luma = pooled_luma(images, patches, patch_size, edge_scale)
    rows, cols = images.shape[2] // patch_size, images.shape[3] // patch_size
    return min_max_scale(patch_edge_means(luma, rows, cols)).to(torch.float32)


def min_max_scale(values: torch.Tensor) -> torch.Tensor:
    """Scale each row of a (B, N) tensor to [0, 1]; a row with no spread gives 0."""
    low = values.amin(dim=1, keepdim=True)
    spread = values.amax(dim=1, keepdim=True) - low
    has_spread = spread > MIN_EDGE_RANGE
    scaled = (values - low) / torch.where(has_spread, spread, torch.ones_like(spread))
    return torch.where(has_spread, scaled, torch.zeros_like(scaled))


def center_patches_(patches: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Center each patch's pixel vector in place and return its inverse L2 norm.

    Standardizing a vector and then L2-normalizing it gives the same unit
    vector as centering it and dividing by its norm, so the descriptor of
    patch j is ``centered[:, j] * inverse_norm[:, j]``. Flat patches get an
    inverse norm of 0, hence the zero descriptor.

    Args:
        patches: (B, N, 3, p, p) float32 from :func:`to_patches`; overwritten.
        scale: factor from the pixel values to the [0, 1] scale.

    Returns:
        centered: (B, N, D) float32 view of ``patches``, D = 3 p p.
        inverse_norm: (B, N) float32, ``1 / ||centered_j||`` or 0 when flat.
    """
    centered = patches.reshape(patches.shape[0], patches.shape[1], -1)
    centered -= centered.mean(dim=2, keepdim=True)
    norm = torch.linalg.vector_norm(centered, dim=2)
    is_flat = norm <= FLAT_PATCH_STD * centered.shape[2] ** 0.5 / scale
    inverse_norm = torch.where(is_flat, 0.0, 1.0 / torch.where(is_flat, 1.0, norm))
    return centered, inverse_norm


def cosine_rows(
    centered: torch.Tensor, inverse_norm: torch.Tensor, row_indices: torch.Tensor
) -> torch.Tensor:
    """Compute the cosine similarity of selected patches with every patch.

    Args:
        centered: (B, N, D) from :func:`center_patches_`.
        inverse_norm: (B, N) from :func:`center_patches_`.
        row_indices: (B, R) int64 patch indices of the rows.

    Returns:
        (B, R, N) float32; entries involving a flat patch are exactly 0.
    """
    dim = centered.shape[2]
    rows = torch.gather(centered, 1, row_indices[:, :, None].expand(-1, -1, dim))
    if _float32_matmul_is_exact(centered.device):
        dots = torch.bmm(rows, centered.transpose(1, 2))
    else:
        dots = torch.bmm(rows.double(), centered.double().transpose(1, 2)).to(torch.float32)
    row_scale = torch.gather(inverse_norm, 1, row_indices)
    return dots * row_scale[:, :, None] * inverse_norm[:, None, :]


def _float32_matmul_is_exact(device: torch.device) -> bool:
    """Return whether float32 matmul on ``device`` runs in full float32 precision.

    It returns False on CUDA, because a trainer may switch cuBLAS to TF32 at
    any time and masks must not change with it, and float64 costs little
    there. On the CPU, ``torch.set_float32_matmul_precision`` can switch
    oneDNN to bf16, which shows in ``torch.backends.mkldnn.matmul``.
    """
    if device.type == "cuda":
        return False
    if device.type != "cpu":
        return True
    try:
        return torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")
    except (AttributeError, RuntimeError):
        return False


def grid_coordinates(rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (N,) int64 row and column of every patch, row-major."""
    index = torch.arange(rows * cols, device=device)
    return index // cols, index % cols
