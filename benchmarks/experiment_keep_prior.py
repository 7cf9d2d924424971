"""Experiment: a saliency prior in the PGS keep row (a proposal, not shipped).

Usage: python benchmarks/experiment_keep_prior.py [--seeds 3]

pgs_dali's PGS puts lambda * E_j (edge score) in the keep row of the
transport problem and draws candidates away from edges. This script
re-implements that step compactly and swaps E for a prior

    P_j = minmax( box3x3(E)_j + w_b * B_j + w_c * G_j )

where box3x3 averages E over the 3x3 patch neighbourhood and G_j is a
centred Gaussian (sigma 0.35 on [-1, 1]^2). B_j is the colour distance of
patch j's mean RGB to its nearest quarter of the border patches, min-max
scaled, because objects rarely share their colour with the image border. The same
P_j steers the candidates. It uses pixels only, never the object masks. The
script reports retention for the re-implementation with P = E (the control)
and with the prior, on coco-mini, and writes
benchmarks/results/experiment_keep_prior.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import torch
import torch.nn.functional as F

from bench_common import COCO_MINI, write_result

RATIOS = (0.3, 0.5, 0.75)


def edge_scores(images: torch.Tensor, patch_size: int, edge_scale: int) -> torch.Tensor:
    """Return (B, N) min-max scaled mean Sobel magnitude of pooled luma per patch."""
    from kornia.filters import sobel

    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    luma = F.avg_pool2d((images * weights).sum(1, keepdim=True), edge_scale)
    rows, cols = images.shape[2] // patch_size, images.shape[3] // patch_size
    edges = F.adaptive_avg_pool2d(sobel(luma, normalized=True), (rows, cols)).flatten(1)
    return minmax(edges)


def minmax(values: torch.Tensor) -> torch.Tensor:
    low = values.amin(1, keepdim=True)
    spread = values.amax(1, keepdim=True) - low
    return torch.where(spread > 1e-6, (values - low) / spread.clamp_min(1e-6), torch.zeros_like(values))


def keep_prior(images: torch.Tensor, edges: torch.Tensor, patch_size: int, border_weight: float, center_weight: float) -> torch.Tensor:
    """Return the (B, N) prior P described in the module docstring."""
    batch = images.shape[0]
    rows, cols = images.shape[2] // patch_size, images.shape[3] // patch_size
    smoothed = F.avg_pool2d(edges.view(batch, 1, rows, cols), 3, stride=1, padding=1, count_include_pad=False).flatten(1)

    colours = F.avg_pool2d(images, patch_size).flatten(2).transpose(1, 2)
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    ring = ((row == 0) | (row == rows - 1) | (col == 0) | (col == cols - 1)).flatten()
    distances = torch.cdist(colours, colours[:, ring])
    nearest = max(1, int(ring.sum()) // 4)
    border = minmax(distances.topk(nearest, dim=2, largest=False).values.mean(2))

    y = (row.float() + 0.5) / rows * 2 - 1
    x = (col.float() + 0.5) / cols * 2 - 1
    center = torch.exp(-(x**2 + y**2) / (2 * 0.35**2)).flatten()
    return minmax(smoothed + border_weight * border + center_weight * center[None])


def pgs_keep(images: torch.Tensor, prior: torch.Tensor, mask_ratio: float, config, generator: torch.Generator) -> torch.Tensor:
    """Compute PGS keep indices with ``prior`` in place of E (section 2 steps 2-5)."""
    batch, _, height, width = images.shape
    p = config.patch_size
    num_patches = (height // p) * (width // p)
    num_masked = round(num_patches * mask_ratio)
    num_candidates = max(1, round(config.candidate_ratio * num_patches))

    uniform = torch.rand(batch, num_patches, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(uniform))
    candidates = (gumbel - config.candidate_edge_bias * prior.double()).topk(num_candidates, dim=1).indices

    patches = F.unfold(images, p, stride=p).transpose(1, 2)
    patches = patches - patches.mean(2, keepdim=True)
    patches = patches / patches.norm(dim=2, keepdim=True).clamp_min(1e-6)
    rows = patches.gather(1, candidates[:, :, None].expand(-1, -1, patches.shape[2]))
    similarity = rows @ patches.transpose(1, 2)

    logits = torch.cat([similarity, config.edge_weight * prior[:, None, :]], 1).double() / config.epsilon
    log_rows = torch.full((num_candidates + 1,), math.log(num_masked / num_candidates), dtype=torch.float64)
    log_rows[-1] = math.log(num_patches - num_masked)
    column = torch.zeros(batch, num_patches, dtype=torch.float64)
    for _ in range(config.sinkhorn_iters):
        row = log_rows - torch.logsumexp(logits + column[:, None, :], 2)
        column = -torch.logsumexp(logits + row[:, :, None], 1)
    priority = -(logits[:, -1] + row[:, -1:] + column)
    priority = priority.scatter(1, candidates, math.inf)
    order = torch.sort(priority, dim=1, descending=True, stable=True).indices
    return order[:, num_masked:].sort(1).values


def evaluate(views, config, border_weight: float, center_weight: float, use_prior: bool) -> dict[float, float]:
    from pgs_dali.retention import retention_per_image

    scores = {}
    for ratio in RATIOS:
        values = []
        for view in views:
            generator = torch.Generator().manual_seed(view.seed)
            edges = edge_scores(view.images, config.patch_size, config.edge_scale)
            prior = keep_prior(view.images, edges, config.patch_size, border_weight, center_weight) if use_prior else edges
            keep = pgs_keep(view.images, prior, ratio, config, generator)
            values.append(retention_per_image(keep, view.patch_foreground))
        scores[ratio] = round(float(torch.stack(values).nanmean()), 4)
    return scores


def main(argv: list[str] | None = None) -> int:
    from pgs_dali.masking.config import MaskConfig
    from pgs_dali.retention import load_coco_foreground, prepare_views

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)

    samples = load_coco_foreground(COCO_MINI / "images", COCO_MINI / "annotations" / "instances_train2017.json")
    splits = {
        "tune": [prepare_views(samples[0::2], seed) for seed in range(args.seeds)],
        "held_out": [prepare_views(samples[1::2], seed) for seed in range(args.seeds)],
        "all": [prepare_views(samples, seed) for seed in range(args.seeds)],
    }
    config = MaskConfig()
    variants = [
        ("control: P = E (edges only)", dict(border_weight=0.0, center_weight=0.0, use_prior=False)),
        ("box3x3(E) + 0.5 border contrast", dict(border_weight=0.5, center_weight=0.0, use_prior=True)),
        ("box3x3(E) + 0.5 border contrast + 0.3 centre", dict(border_weight=0.5, center_weight=0.3, use_prior=True)),
    ]
    rows = []
    with torch.inference_mode():
        for label, settings in variants:
            row = {"variant": label, **settings}
            for split, views in splits.items():
                row[split] = evaluate(views, config, **settings)
            rows.append(row)
            print(label, {split: row[split] for split in splits}, flush=True)
    path = write_result(
        "experiment_keep_prior",
        {
            "command": "python benchmarks/experiment_keep_prior.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seeds": args.seeds,
            "mask_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("strategy", "mask_ratio")},
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
