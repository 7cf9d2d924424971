"""Per-image NumPy reference of the ``"pgs"`` strategy, for tests.

It follows the algorithm step by step with explicit loops and float64
arithmetic and shares nothing with the package except the counter-based noise
(:func:`pgs_dali.masking.noise.counter_uniform`), which defines the random
draws. The batched implementation must return the same indices.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pgs_dali.masking.config import MaskConfig
from pgs_dali.masking.noise import STREAM_PGS_CANDIDATES, counter_uniform

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SOBEL_EPS = 1e-6  # kornia.filters.sobel's default eps, added inside the square root
FLAT_PATCH_STD = 1e-5
MIN_EDGE_RANGE = 1e-6

# Kornia's normalized Sobel kernels: the raw stencil divided by its L1 norm 8,
# applied as a cross-correlation (F.conv2d) after replicate padding.
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
SOBEL_Y = SOBEL_X.T


def to_unit(image: np.ndarray) -> np.ndarray:
    """Return a (3, H, W) image as float64 on the [0, 1] scale."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return image.astype(np.float64)


def pooled_luma(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Average-pool the luma of (3, H, W) pixels over scale x scale windows."""
    luma = sum(weight * pixels[channel] for channel, weight in enumerate(LUMA_WEIGHTS))
    height, width = luma.shape[0] // scale, luma.shape[1] // scale
    windows = luma[: height * scale, : width * scale].reshape(height, scale, width, scale)
    return windows.mean(axis=(1, 3))


def sobel_magnitude(luma: np.ndarray) -> np.ndarray:
    """Return sqrt(gx^2 + gy^2 + eps) with replicate padding, as Kornia computes it."""
    padded = np.pad(luma, 1, mode="edge")
    height, width = luma.shape
    gx = np.zeros_like(luma)
    gy = np.zeros_like(luma)
    for dy in range(3):
        for dx in range(3):
            shifted = padded[dy : dy + height, dx : dx + width]
            gx += SOBEL_X[dy, dx] * shifted
            gy += SOBEL_Y[dy, dx] * shifted
    return np.sqrt(gx * gx + gy * gy + SOBEL_EPS)


def patch_means(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Average (h, w) values over the windows of adaptive average pooling to rows x cols."""
    height, width = values.shape
    means = np.zeros(rows * cols)
    for row in range(rows):
        top, bottom = (row * height) // rows, -((-(row + 1) * height) // rows)
        for col in range(cols):
            left, right = (col * width) // cols, -((-(col + 1) * width) // cols)
            means[row * cols + col] = values[top:bottom, left:right].mean()
    return means


def edge_scores(pixels: np.ndarray, config: MaskConfig) -> np.ndarray:
    """Return E (N,) in [0, 1] for (3, H, W) float64 pixels."""
    rows, cols = pixels.shape[1] // config.patch_size, pixels.shape[2] // config.patch_size
    means = patch_means(sobel_magnitude(pooled_luma(pixels, config.edge_scale)), rows, cols)
    spread = means.max() - means.min()
    if spread <= MIN_EDGE_RANGE:
        return np.zeros_like(means)
    return (means - means.min()) / spread


def patch_unit_vectors(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """Return (N, 3 p p) standardized, L2-normalized patch vectors; flat patches are 0."""
    rows, cols = pixels.shape[1] // patch_size, pixels.shape[2] // patch_size
    vectors = []
    for row in range(rows):
        for col in range(cols):
            patch = pixels[:, row * patch_size : (row + 1) * patch_size, col * patch_size : (col + 1) * patch_size]
            values = patch.ravel()
            std = values.std()
            if std <= FLAT_PATCH_STD:
                vectors.append(np.zeros_like(values))
                continue
            standardized = (values - values.mean()) / std
            vectors.append(standardized / np.linalg.norm(standardized))
    return np.stack(vectors)


def log_sum_exp(values: np.ndarray) -> float:
    """Return log(sum(exp(values))) without overflow."""
    peak = values.max()
    return float(peak + math.log(np.exp(values - peak).sum()))


def reference_keep_indices(
    image: np.ndarray, config: MaskConfig, key_id: int, epoch: int = 0
) -> np.ndarray:
    """Return the (K,) ascending kept patch indices of one (3, H, W) image under ``"pgs"``."""
    pixels = to_unit(image)
    rows, cols = pixels.shape[1] // config.patch_size, pixels.shape[2] // config.patch_size
    num_patches = rows * cols
    num_masked = round(num_patches * config.mask_ratio)
    if num_masked == 0:
        return np.arange(num_patches)

    # Edge map and Gumbel-top-k candidates over -beta * E.
    edges = edge_scores(pixels, config)
    uniform = counter_uniform(
        torch.tensor([key_id]), num_patches, seed=config.seed, epoch=epoch, stream=STREAM_PGS_CANDIDATES
    )[0].numpy()
    scores = -np.log(-np.log(uniform)) - config.candidate_edge_bias * edges
    num_candidates = max(1, round(config.candidate_ratio * num_patches))
    candidates = sorted(range(num_patches), key=lambda j: (-scores[j], j))[:num_candidates]

    # Cosine similarity of each candidate with every patch.
    vectors = patch_unit_vectors(pixels, config.patch_size)
    similarity = np.zeros((num_candidates, num_patches))
    for i, candidate in enumerate(candidates):
        for j in range(num_patches):
            similarity[i, j] = float(vectors[candidate] @ vectors[j])
            if config.neighborhood_radius is not None:
                distance = max(abs(candidate // cols - j // cols), abs(candidate % cols - j % cols))
                if distance > config.neighborhood_radius:
                    similarity[i, j] = -1.0

    # Log-domain Sinkhorn: candidate rows of mass M / n_c, a keep row of mass
    # N - M, columns of mass 1.
    logits = np.vstack([similarity / config.epsilon, config.edge_weight * edges[None, :] / config.epsilon])
    log_row_mass = [math.log(num_masked / num_candidates)] * num_candidates
    log_row_mass.append(math.log(num_patches - num_masked))
    row_potential = np.zeros(num_candidates + 1)
    column_potential = np.zeros(num_patches)
    for _ in range(config.sinkhorn_iters):
        for i in range(num_candidates + 1):
            row_potential[i] = log_row_mass[i] - log_sum_exp(logits[i] + column_potential)
        for j in range(num_patches):
            column_potential[j] = -log_sum_exp(logits[:, j] + row_potential)

    # Mask the candidates, then the patches with the highest q_j = 1 - Pi_keep,j,
    # ranked by -log Pi_keep,j rounded to float32 (ties: lower index first).
    log_keep = logits[-1] + row_potential[-1] + column_potential
    priority = (-log_keep).astype(np.float32)
    priority[candidates] = np.inf
    order = sorted(range(num_patches), key=lambda j: (-priority[j], j))
    return np.array(sorted(order[num_masked:]), dtype=np.int64)


# Test inputs -----------------------------------------------------------------


def synthetic_photos(batch: int, height: int = 224, width: int = 224, seed: int = 0) -> torch.Tensor:
    """Make (B, 3, H, W) uint8 photo-like images.

    Each image is a smooth colour field with three flat-coloured rectangles as
    objects and mild pixel noise. A local generator draws them, so the torch
    global random state is untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    field = torch.rand(batch, 3, 6, 6, generator=generator)
    images = torch.nn.functional.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)
    for index in range(batch):
        for _ in range(3):
            box_height = int(torch.randint(height // 8, height // 2, (1,), generator=generator))
            box_width = int(torch.randint(width // 8, width // 2, (1,), generator=generator))
            top = int(torch.randint(0, height - box_height, (1,), generator=generator))
            left = int(torch.randint(0, width - box_width, (1,), generator=generator))
            colour = torch.rand(3, 1, 1, generator=generator)
            images[index, :, top : top + box_height, left : left + box_width] = colour
    images += 0.03 * torch.randn(images.shape, generator=generator)
    return (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
