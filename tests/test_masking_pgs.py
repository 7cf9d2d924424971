"""The steps of the batched PGS strategy: candidates, similarity, Sinkhorn."""

from __future__ import annotations

import math

import torch
from reference_pgs import synthetic_photos

from pgs_dali.masking import MaskConfig, keep_indices
from pgs_dali.masking import pgs
from pgs_dali.masking.features import center_patches_, cosine_rows, pixel_scale, to_patches
from pgs_dali.masking.ranking import keep_after_masking, order_by_priority


def random_similarity(batch: int, num_candidates: int, num_patches: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num_candidates, num_patches, generator=generator) * 2 - 1


def plan_from_potentials(similarity, edges, num_masked, config, iterations):
    """Run the plain log-domain iteration and return the whole log plan (B, n_c + 1, N)."""
    batch, num_candidates, num_patches = similarity.shape
    logits = torch.cat(
        [similarity.double() / config.epsilon, (config.edge_weight / config.epsilon) * edges.double()[:, None]],
        dim=1,
    )
    log_mass = torch.full((num_candidates + 1,), math.log(num_masked / num_candidates), dtype=torch.float64)
    log_mass[-1] = math.log(num_patches - num_masked)
    column = torch.zeros(batch, num_patches, dtype=torch.float64)
    for _ in range(iterations):
        row = log_mass - torch.logsumexp(logits + column[:, None, :], dim=2)
        column = -torch.logsumexp(logits + row[:, :, None], dim=1)
    return logits + row[:, :, None] + column[:, None, :]


def test_sinkhorn_matches_plain_iteration():
    similarity = random_similarity(4, 10, 196, seed=0)
    edges = torch.rand(4, 196, generator=torch.Generator().manual_seed(1))
    config = MaskConfig()

    log_keep = pgs.keep_row_log_plan(similarity, edges, 98, config)

    expected = plan_from_potentials(similarity, edges, 98, config, config.sinkhorn_iters)[:, -1]
    torch.testing.assert_close(log_keep, expected, rtol=0, atol=1e-12)


def test_sinkhorn_marginals():
    similarity = random_similarity(3, 10, 196, seed=2)
    edges = torch.rand(3, 196, generator=torch.Generator().manual_seed(3))
    config = MaskConfig(sinkhorn_iters=300)

    plan = plan_from_potentials(similarity, edges, 98, config, config.sinkhorn_iters).exp()
    log_keep = pgs.keep_row_log_plan(similarity, edges, 98, config)

    torch.testing.assert_close(plan[:, -1], log_keep.exp(), rtol=1e-10, atol=1e-12)
    # Columns sum to 1 after every column update; rows converge to their masses.
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(3, 196, dtype=torch.float64))
    row_mass = torch.tensor([9.8] * 10 + [98.0], dtype=torch.float64).expand(3, 11)
    torch.testing.assert_close(plan.sum(dim=2), row_mass, rtol=1e-6, atol=0)


def test_sinkhorn_keep_row_prefers_edges():
    # Zero similarity everywhere: only the keep row's lambda * E / eps separates patches.
    similarity = torch.zeros(1, 5, 100)
    edges = torch.linspace(0, 1, 100)[None]

    log_keep = pgs.keep_row_log_plan(similarity, edges, 50, MaskConfig())

    assert bool((log_keep.diff(dim=1) > 0).all())
    assert float(log_keep.max()) <= 1e-12


def test_candidates_avoid_edges():
    edges = torch.zeros(8, 196)
    edges[:, 98:] = 1.0
    config = MaskConfig(candidate_edge_bias=60.0)

    candidates = pgs.draw_candidates(edges, torch.arange(8), 10, config, epoch=0)

    assert candidates.shape == (8, 10)
    assert bool((candidates < 98).all())
    for row in candidates:
        assert len(set(row.tolist())) == 10


def test_candidates_uniform_without_bias():
    edges = torch.rand(512, 196, generator=torch.Generator().manual_seed(4))
    config = MaskConfig(candidate_edge_bias=0.0)

    candidates = pgs.draw_candidates(edges, torch.arange(512), 10, config, epoch=0)

    counts = torch.bincount(candidates.flatten(), minlength=196).double()
    # 5120 draws over 196 patches: about 26 per patch, standard deviation about 5.
    assert float(counts.min()) > 5
    assert float(counts.max()) < 50


def test_candidates_always_masked():
    images = synthetic_photos(6, seed=5)
    config = MaskConfig(mask_ratio=0.1, candidate_ratio=0.1)
    key_ids = torch.tensor([101, 102, 103, 104, 105, 106])

    keep = keep_indices(images, config, keys=key_ids, epoch=0)
    edges, candidates, similarity = pgs.generate_candidates(images, key_ids, config, epoch=0)
    priority = pgs.select_priority(edges, candidates, similarity, 20, config)

    # n_c = M = 20: exactly the candidates, the +inf entries, are masked.
    masked = torch.ones(6, 196, dtype=torch.bool).scatter_(1, keep, False)
    assert torch.equal(masked, torch.isinf(priority))


def test_similarity_flat_patches_zero():
    images = synthetic_photos(2, seed=6)
    images[:, :, :16, :16] = 77  # patch 0 is flat
    patches = to_patches(images, 16)
    centered, inverse_norm = center_patches_(patches, pixel_scale(images))
    rows = torch.tensor([[0, 5], [0, 5]])

    similarity = cosine_rows(centered, inverse_norm, rows)

    assert bool((similarity[:, 0] == 0).all())
    assert bool((similarity[:, :, 0] == 0).all())
    torch.testing.assert_close(similarity[:, 1, 5], torch.ones(2))
    assert float(similarity.abs().max()) <= 1 + 1e-5


def test_similarity_neighborhood():
    images = synthetic_photos(1, seed=7)
    patches = to_patches(images, 16)
    centered, inverse_norm = center_patches_(patches, pixel_scale(images))
    candidates = torch.tensor([[0, 100]])

    similarity = pgs.candidate_similarity(centered, inverse_norm, candidates, 14, MaskConfig(neighborhood_radius=1))

    grid = similarity.reshape(2, 14, 14)
    far = torch.ones(14, 14, dtype=torch.bool)
    far[:2, :2] = False
    assert bool((grid[0][far] == -1).all())
    assert bool((grid[0][~far] > -1).all())
    near = torch.zeros(14, 14, dtype=torch.bool)
    near[6:9, 1:4] = True  # patch 100 is row 7, column 2
    assert bool((grid[1][~near] == -1).all())


def test_ties_go_to_lower_index():
    priority = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])

    assert order_by_priority(priority).tolist() == [[1, 2, 4, 3, 0]]
    assert keep_after_masking(priority, 2).tolist() == [[0, 3, 4]]


def test_tie_break_orders_equal_priorities():
    priority = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])
    tie_break = torch.tensor([[0.1, 0.2, 0.9, 0.8, 0.5]])

    assert order_by_priority(priority, tie_break).tolist() == [[3, 1, 2, 4, 0]]
