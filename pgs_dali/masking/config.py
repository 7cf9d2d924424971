"""Settings of the patch-mask strategies."""

from __future__ import annotations

import dataclasses
import math

STRATEGIES = ("pgs", "random", "gaussian", "cluster", "grid", "block", "none")


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Settings for :func:`pgs_dali.masking.keep_indices`.

    Attributes:
        strategy: one of ``"pgs"``, ``"random"``, ``"gaussian"``, ``"cluster"``,
            ``"grid"``, ``"block"``, ``"none"``.
        mask_ratio: fraction rho of the N patches to mask, in [0, 1). The
            number masked is M = round(N * rho) and K = N - M are kept.
            ``"grid"`` always masks 3 of every 2x2 window and ``"none"``
            masks nothing, whatever this value is.
        patch_size: ViT patch size p in pixels; H and W must be multiples.
        candidate_ratio: PGS candidates as a fraction of N,
            n_c = max(1, round(candidate_ratio * N)); at most ``mask_ratio``.
        edge_scale: average-pooling factor applied to luma before Sobel, so
            fine texture does not count as an edge.
        edge_weight: lambda, the weight of the edge score in the keep row of
            the optimal-transport problem.
        candidate_edge_bias: beta; candidates are drawn by Gumbel-top-k over
            logits ``-beta * E_j``, so larger values avoid edges more.
        epsilon: entropic regularization of the Sinkhorn iterations.
        sinkhorn_iters: number of log-domain Sinkhorn iterations (no early exit).
        neighborhood_radius: if set, a candidate only claims patches within
            this Chebyshev distance on the patch grid; ``None`` compares with
            every patch.
        seed: base seed of the counter-based noise; a sample's mask depends
            only on its pixels, ``seed``, the epoch and the sample key.
        gaussian_sigma: standard deviation of the ``"gaussian"`` keep prior on
            the grid mapped to [-1, 1]^2.
        cluster_anchor_ratio: ``"cluster"`` anchors as a fraction of N.
        cluster_threshold: cosine similarity above which ``"cluster"`` masks a
            patch next to an anchor.

    The PGS defaults (``edge_scale`` 2, ``edge_weight`` 1, ``candidate_edge_bias``
    10, ``sinkhorn_iters`` 10) were tuned for object retention on 80 COCO
    photos with ``benchmarks/tune_retention.py``; BENCHMARKS.md lists every
    change with its numbers.
    """

    strategy: str = "pgs"
    mask_ratio: float = 0.5
    patch_size: int = 16
    candidate_ratio: float = 0.05
    edge_scale: int = 2
    edge_weight: float = 1.0
    candidate_edge_bias: float = 10.0
    epsilon: float = 0.3
    sinkhorn_iters: int = 10
    neighborhood_radius: int | None = None
    seed: int = 0
    gaussian_sigma: float = 0.2
    cluster_anchor_ratio: float = 0.03
    cluster_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        _check_real("mask_ratio", self.mask_ratio)
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        _check_int("patch_size", self.patch_size, minimum=1)
        _check_real("candidate_ratio", self.candidate_ratio)
        if not 0.0 < self.candidate_ratio <= 1.0:
            raise ValueError(f"candidate_ratio must be in (0, 1], got {self.candidate_ratio}")
        if self.strategy == "pgs" and self.candidate_ratio > self.mask_ratio:
            raise ValueError(
                f"candidate_ratio ({self.candidate_ratio}) must not exceed mask_ratio "
                f"({self.mask_ratio}): every candidate patch is masked"
            )
        _check_int("edge_scale", self.edge_scale, minimum=1)
        _check_real("edge_weight", self.edge_weight)
        _check_real("candidate_edge_bias", self.candidate_edge_bias)
        _check_real("epsilon", self.epsilon)
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        _check_int("sinkhorn_iters", self.sinkhorn_iters, minimum=1)
        if self.neighborhood_radius is not None:
            _check_int("neighborhood_radius", self.neighborhood_radius, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**64:
            raise ValueError(f"seed must be < 2**64 (it is hashed as two 32-bit words), got {self.seed}")
        _check_real("gaussian_sigma", self.gaussian_sigma)
        if self.gaussian_sigma <= 0:
            raise ValueError(f"gaussian_sigma must be > 0, got {self.gaussian_sigma}")
        _check_real("cluster_anchor_ratio", self.cluster_anchor_ratio)
        if not 0.0 < self.cluster_anchor_ratio <= 1.0:
            raise ValueError(
                f"cluster_anchor_ratio must be in (0, 1], got {self.cluster_anchor_ratio}"
            )
        _check_real("cluster_threshold", self.cluster_threshold)

    def num_patches(self, height: int, width: int) -> int:
        """Return N for an image of ``height`` x ``width`` pixels (validated)."""
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch_size {self.patch_size}"
            )
        return (height // self.patch_size) * (width // self.patch_size)

    def num_kept(self, height: int, width: int) -> int:
        """Return K, the patches kept per image, for ``height`` x ``width`` pixels."""
        n = self.num_patches(height, width)
        if self.strategy == "none":
            return n
        if self.strategy == "grid":
            rows, cols = height // self.patch_size, width // self.patch_size
            return math.ceil(rows / 2) * math.ceil(cols / 2)
        return n - round(n * self.mask_ratio)


def _check_real(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
