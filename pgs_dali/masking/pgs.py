"""Patch Generation-to-Selection (PGS) masking, batched over images.

This implements the method as described in Pei et al., "Seeing What Matters:
Empowering CLIP with Patch Generation-to-Selection" (CVPR 2025). Candidate
patches are drawn away from edges and compared with every patch by cosine
similarity. An entropic optimal-transport plan with a "keep" row then gives
each patch's probability of being masked, and the most likely ones are.
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
    scaled_edge_scores,
    to_patches,
)
from pgs_dali.masking.noise import STREAM_PGS_CANDIDATES, counter_uniform
from pgs_dali.masking.ranking import order_by_priority


def draw_candidates(
    edges: torch.Tensor, key_ids: torch.Tensor, num_candidates: int, config: MaskConfig, epoch: int
) -> torch.Tensor:
    """Draw candidates without replacement by Gumbel-top-k over ``-beta * E``.

    Args:
        edges: (B, N) float32 edge scores E in [0, 1].
        key_ids: (B,) int64 sample ids.
        num_candidates: n_c, 1 <= n_c <= N.
        config: supplies ``candidate_edge_bias`` (beta) and ``seed``.
        epoch: epoch of the noise.

    Returns:
        (B, n_c) int64 patch indices, highest score first; equal scores are
        taken in ascending patch order.
    """
    uniform = counter_uniform(
        key_ids, edges.shape[1], seed=config.seed, epoch=epoch, stream=STREAM_PGS_CANDIDATES
    )
    gumbel = -torch.log(-torch.log(uniform))
    scores = gumbel - config.candidate_edge_bias * edges.to(torch.float64)
    return order_by_priority(scores)[:, :num_candidates]


def candidate_similarity(
    centered: torch.Tensor,
    inverse_norm: torch.Tensor,
    candidates: torch.Tensor,
    cols: int,
    config: MaskConfig,
) -> torch.Tensor:
    """Compute S, the cosine of each candidate with every patch.

    Args:
        centered: (B, N, D) centered patch vectors from ``center_patches_``.
        inverse_norm: (B, N) their inverse norms, 0 for flat patches.
        candidates: (B, n_c) int64 patch indices.
        cols: patch columns W/p of the grid.
        config: supplies ``neighborhood_radius``.

    Returns:
        (B, n_c, N) float32 in [-1, 1]. With a neighborhood radius r, entries
        farther than r from the candidate (Chebyshev distance on the patch
        grid) are -1.
    """
    similarity = cosine_rows(centered, inverse_norm, candidates)
    if config.neighborhood_radius is None:
        return similarity

    rows = centered.shape[1] // cols
    patch_row, patch_col = grid_coordinates(rows, cols, centered.device)
    candidate_row, candidate_col = candidates // cols, candidates % cols
    distance = torch.maximum(
        (candidate_row[:, :, None] - patch_row).abs(), (candidate_col[:, :, None] - patch_col).abs()
    )
    return similarity.masked_fill(distance > config.neighborhood_radius, -1.0)


# Largest |logit| for which Sinkhorn runs with exp(logits) precomputed. Every
# sum then stays within exp(+-300) of 1, far inside float64's range.
_MAX_FACTORED_LOGIT = 300.0


def keep_row_log_plan(
    similarity: torch.Tensor, edges: torch.Tensor, num_masked: int, config: MaskConfig
) -> torch.Tensor:
    """Run log-domain Sinkhorn with a keep row and return the keep row of log Pi.

    Rows are the n_c candidates with mass M / n_c each and one keep row with
    mass N - M. Columns are the N patches with mass 1 each. The logits are
    S / eps for candidate rows and lambda * E / eps for the keep row. The
    iteration count is fixed, and each iteration ends with the column update,
    so every column of the plan sums to 1 and Pi_keep,j is in (0, 1].

    Args:
        similarity: (B, n_c, N) cosine similarities S in [-1, 1].
        edges: (B, N) edge scores E in [0, 1].
        num_masked: M, with n_c <= M < N.
        config: supplies ``epsilon``, ``edge_weight`` and ``sinkhorn_iters``.

    Returns:
        (B, N) float64 log Pi_keep,j.
    """
    batch, num_candidates, num_patches = similarity.shape
    device = similarity.device

    # NOTE: the plan is float64 because it is small (B x (n_c + 1) x N) and
    # double precision keeps the batched ranking equal to a per-image one.
    keep_logits = (config.edge_weight / config.epsilon) * edges.to(torch.float64)
    logits = torch.cat(
        [similarity.to(torch.float64) / config.epsilon, keep_logits[:, None, :]], dim=1
    )
    log_row_mass = torch.full(
        (num_candidates + 1,), math.log(num_masked / num_candidates), dtype=torch.float64, device=device
    )
    log_row_mass[-1] = math.log(num_patches - num_masked)
    column_potential = torch.zeros(batch, num_patches, dtype=torch.float64, device=device)

    logit_bound = max(1.0, abs(config.edge_weight)) / config.epsilon
    if logit_bound <= _MAX_FACTORED_LOGIT:
        row_potential, column_potential = _sinkhorn_factored(
            logits, log_row_mass, column_potential, config.sinkhorn_iters
        )
    else:
        for _ in range(config.sinkhorn_iters):
            row_potential = log_row_mass - torch.logsumexp(logits + column_potential[:, None, :], dim=2)
            column_potential = -torch.logsumexp(logits + row_potential[:, :, None], dim=1)
    return logits[:, -1, :] + row_potential[:, -1:] + column_potential


def _sinkhorn_factored(
    logits: torch.Tensor, log_row_mass: torch.Tensor, column_potential: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the log-domain updates with exp(logits) computed once.

    ``logsumexp_j(C_ij + g_j)`` is evaluated as
    ``max(g) + log(sum_j exp(C_ij) exp(g_j - max(g)))``: the potentials stay
    in log form and are shifted by their maximum as in ``logsumexp``, but each
    iteration takes N + n_c + 1 exponentials per image instead of
    2 (n_c + 1) N. With |C| <= 300 every sum lies in [exp(-300), N exp(300)],
    and a term that underflows is below 1e-60 of its sum.
    """
    kernel = torch.exp(logits)
    kernel_t = kernel.transpose(1, 2)

    # Both sums are written as (1 x n) @ (n x m) products, which CPU BLAS runs
    # several times faster than the (m x n) @ (n x 1) form for these shapes.
    for _ in range(iterations):
        column_shift = column_potential.amax(dim=1, keepdim=True)
        column_weight = torch.exp(column_potential - column_shift)
        row_sum = torch.bmm(column_weight[:, None, :], kernel_t)[:, 0, :]
        row_potential = log_row_mass - (column_shift + torch.log(row_sum))

        row_shift = row_potential.amax(dim=1, keepdim=True)
        row_weight = torch.exp(row_potential - row_shift)
        column_sum = torch.bmm(row_weight[:, None, :], kernel)[:, 0, :]
        column_potential = -(row_shift + torch.log(column_sum))
    return row_potential, column_potential


def masking_priority(log_keep: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Turn log Pi_keep into a (B, N) float32 priority, candidates on top.

    A lower Pi_keep,j means a higher q_j = 1 - Pi_keep,j, so the priority is
    -log Pi_keep,j: it orders patches as q does without the rounding of
    1 - Pi near 1. Rounding it to float32 makes patches whose plan columns
    are equal in exact arithmetic (flat background, say) tie exactly, so the
    tie goes to the lower index whatever the last bits of ``exp`` were.
    """
    priority = (-log_keep).to(torch.float32)
    return priority.scatter(1, candidates, float("inf"))


def generate_candidates(
    images: torch.Tensor, key_ids: torch.Tensor, config: MaskConfig, epoch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the pixel steps of PGS: edge scores, candidates and their similarities.

    Args:
        images: (B, 3, H, W) RGB, uint8 or float on the [0, 1] scale.
        key_ids: (B,) int64 sample ids.
        config: the mask settings.
        epoch: epoch of the noise.

    Returns:
        edges: (B, N) float32 edge scores E in [0, 1].
        candidates: (B, n_c) int64 candidate patch indices.
        similarity: (B, n_c, N) float32 cosine similarities S.
    """
    patches = to_patches(images, config.patch_size)
    edges = scaled_edge_scores(images, patches, config.patch_size, config.edge_scale)
    num_candidates = max(1, round(config.candidate_ratio * edges.shape[1]))
    candidates = draw_candidates(edges, key_ids, num_candidates, config, epoch)

    centered, inverse_norm = center_patches_(patches, pixel_scale(images))
    cols = images.shape[3] // config.patch_size
    similarity = candidate_similarity(centered, inverse_norm, candidates, cols, config)
    return edges, candidates, similarity


def select_priority(
    edges: torch.Tensor,
    candidates: torch.Tensor,
    similarity: torch.Tensor,
    num_masked: int,
    config: MaskConfig,
) -> torch.Tensor:
    """Run the optimal-transport step and return the PGS masking priority.

    Args:
        edges: (B, N) edge scores from :func:`generate_candidates`.
        candidates: (B, n_c) candidate indices from it.
        similarity: (B, n_c, N) similarities from it.
        num_masked: M, n_c <= M < N.
        config: the mask settings.

    Returns:
        (B, N) float32: mask the M highest. The n_c candidates have priority
        +inf, and ties go to the lower patch index under a stable sort.
    """
    log_keep = keep_row_log_plan(similarity, edges, num_masked, config)
    return masking_priority(log_keep, candidates)
