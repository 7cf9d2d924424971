"""Reference-style implementations that pgs_dali is benchmarked against.

Two baselines live here:

* :func:`released_style_keep_indices`, a masking op that reproduces how the PGS
  authors' released training code (an open_clip fork) computes its masks. It
  is written from a description of that code, not copied from it. It keeps
  that code's behaviour and cost: the full N x N patch cosine matrix per
  image, 50 Sinkhorn-style iterations, Sobel on patch means and a threshold
  selection. It is here for speed comparisons on the same device and batch,
  not for training: its masks do not follow the PGS method (see the
  function's notes).
* :func:`build_openclip_style_loader`, the usual open_clip training input
  path: a webdataset pipeline, torchvision transforms, the open_clip tokenizer
  and a torch ``DataLoader`` with one worker per CPU, with the mask computed
  in the training process on each batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ReleasedStyleMask:
    """Output of :func:`released_style_keep_indices`.

    Attributes:
        keep_indices: (B, K) int64 kept patch indices, ascending.
        attention_mask: (B * heads, K + 1, K + 1) bool over CLS + kept tokens,
            True where a query may attend to a key, in head-major order (see
            the function notes), or None when not requested.
    """

    keep_indices: torch.Tensor
    attention_mask: torch.Tensor | None


def released_style_keep_indices(
    images: torch.Tensor,
    mask_ratio: float = 0.5,
    *,
    patch_size: int = 16,
    candidate_ratio: float = 0.05,
    similarity_threshold: float = 0.5,
    sinkhorn_iters: int = 50,
    num_heads: int = 12,
    attention_mask: bool = True,
    generator: torch.Generator | None = None,
) -> ReleasedStyleMask:
    """Compute patch masks the way the PGS authors' released code does.

    Steps, all batched on ``images.device``:

    1. Split into patches, standardize each patch vector (zero mean, unit
       variance) and L2-normalize it.
    2. Edge map: Sobel magnitude of the grid of per-patch means of the
       standardized patches.
    3. Candidates: the ``candidate_ratio * N`` patches with the highest edge
       response.
    4. Full (B, N, N) cosine similarity between all patches, then
       ``sinkhorn_iters`` alternating row and column rescalings of the signed
       matrix, without exponentiation.
    5. Masked set: every patch whose rescaled similarity to any candidate
       exceeds ``similarity_threshold``; the kept set is then cut or filled
       to exactly K = N - round(N * mask_ratio) patches (unmasked first, ties
       broken at random).
    6. Optionally, an attention mask over CLS + the kept tokens that blocks
       the kept tokens that were over the threshold, repeated per head.

    Args:
        images: (B, 3, H, W) float images (normalized or not).
        mask_ratio: fraction of the N patches to mask, in [0, 1).
        patch_size: ViT patch size p; H and W must be multiples.
        candidate_ratio: candidates as a fraction of N (at least 1).
        similarity_threshold: cosine threshold of step 5.
        sinkhorn_iters: rescaling iterations of step 4.
        num_heads: attention heads for the step 6 mask.
        attention_mask: build the step 6 mask.
        generator: random generator for the tie-breaking noise.

    Returns:
        :class:`ReleasedStyleMask` with (B, K) int64 ``keep_indices``.

    Note:
        This reproduces, on purpose, where the released code departs from
        the method of the PGS paper (Pei et al., CVPR 2025). The candidates
        are the patches with the *highest* edge response, while the paper
        keeps edge regions. The patch means of standardized patches are
        close to zero, so the edge map is mostly rounding noise. The
        rescaling in step 4 works on signed values and does not converge.
        The attention mask is repeated head-major (index h * B + b) while
        ``torch.nn.MultiheadAttention`` expects batch-major (b * heads + h),
        so with B > 1 it pairs heads with the wrong images. The threshold
        0.5 and candidate ratio 0.05 are this module's choices.

    Example:
        >>> out = released_style_keep_indices(torch.rand(2, 3, 64, 64), 0.5)
        >>> out.keep_indices.shape, out.attention_mask.shape
        (torch.Size([2, 8]), torch.Size([24, 9, 9]))
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    batch, _, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size {patch_size}")
    rows, cols = height // patch_size, width // patch_size
    num_patches = rows * cols
    num_kept = num_patches - round(num_patches * mask_ratio)
    num_candidates = max(1, round(candidate_ratio * num_patches))

    # Step 1: (B, N, 3 p^2) patch vectors, standardized and normalized.
    patches = F.unfold(images.float(), kernel_size=patch_size, stride=patch_size).transpose(1, 2)
    mean = patches.mean(-1, keepdim=True)
    std = patches.std(-1, keepdim=True)
    standardized = (patches - mean) / (std + 1e-6)
    normalized = F.normalize(standardized, dim=-1)

    # Step 2: Sobel of the per-patch means of standardized patches.
    import kornia

    patch_means = standardized.mean(-1).view(batch, 1, rows, cols)
    edges = kornia.filters.sobel(patch_means).flatten(1)

    # Step 3: highest-edge patches become candidates.
    candidates = edges.topk(num_candidates, dim=1).indices

    # Step 4: full N x N similarity and signed rescaling.
    similarity = normalized @ normalized.transpose(1, 2)
    for _ in range(sinkhorn_iters):
        similarity = similarity / similarity.sum(dim=2, keepdim=True)
        similarity = similarity / similarity.sum(dim=1, keepdim=True)

    # Step 5: threshold over all patches, then a fixed count.
    candidate_rows = similarity.gather(1, candidates[:, :, None].expand(-1, -1, num_patches))
    masked = (candidate_rows > similarity_threshold).any(dim=1)
    masked.scatter_(1, candidates, True)
    noise = torch.rand(batch, num_patches, device=images.device, generator=generator)
    keep = (masked.float() + noise).topk(num_kept, dim=1, largest=False).indices.sort(dim=1).values

    attention = None
    if attention_mask:
        # Step 6: kept tokens that were over the threshold (kept only to reach
        # K) may not be attended to; CLS always may. Repeated head-major.
        usable = torch.cat(
            [torch.ones(batch, 1, dtype=torch.bool, device=images.device), ~masked.gather(1, keep)], dim=1
        )
        pairwise = usable[:, None, :].expand(-1, num_kept + 1, -1)
        attention = pairwise.repeat(num_heads, 1, 1)
    return ReleasedStyleMask(keep, attention)


def openclip_train_transform(image_size: int = 224) -> Callable:
    """Build open_clip's training image transform.

    RandomResizedCrop(scale 0.9-1.0, bicubic), horizontal flip, ToTensor and
    Normalize with the CLIP mean and std.

    Args:
        image_size: output side in pixels.

    Returns:
        A callable from a PIL image to a (3, S, S) float32 tensor.
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                image_size,
                scale=(0.9, 1.0),
                interpolation=transforms.InterpolationMode.BICUBIC,
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


class OpenClipStyleLoader:
    """open_clip-style input pipeline with the patch mask computed per batch.

    Iterating yields dicts with ``image`` (B, 3, S, S) float32 normalized,
    ``text`` (B, 77) int64 and ``keep_indices`` (B, K) int64 (absent when
    ``mask="none"``). The mask runs in the iterating process, on ``device``,
    after the batch left the worker processes, as in the released training
    code.
    """

    def __init__(
        self,
        loader: torch.utils.data.DataLoader,
        *,
        mask: str,
        mask_ratio: float,
        patch_size: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.loader = loader
        self.mask = mask
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.device = device
        self.seed = seed
        self._mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        for images, texts in self.loader:
            images = images.to(self.device, non_blocking=True)
            texts = texts.to(self.device, non_blocking=True)
            batch = {"image": images, "text": texts}
            if self.mask == "released":
                batch["keep_indices"] = released_style_keep_indices(
                    images, self.mask_ratio, patch_size=self.patch_size, generator=generator
                ).keep_indices
            elif self.mask != "none":
                from pgs_dali.masking import keep_indices
                from pgs_dali.masking.config import MaskConfig

                # pgs_dali's strategies expect un-normalized RGB in [0, 1].
                pixels = (images * self._std + self._mean).clamp_(0.0, 1.0)
                config = MaskConfig(strategy=self.mask, mask_ratio=self.mask_ratio, patch_size=self.patch_size)
                batch["keep_indices"] = keep_indices(pixels, config)
            yield batch


def build_openclip_style_loader(
    shards: Sequence[str],
    batch_size: int,
    *,
    image_size: int = 224,
    num_workers: int | None = None,
    shuffle_buffer: int = 1000,
    mask: str = "released",
    mask_ratio: float = 0.5,
    patch_size: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
) -> OpenClipStyleLoader:
    """Build the open_clip-style loader over webdataset shards.

    The pipeline is webdataset's: shard list, split by worker, tar to samples,
    ``shuffle(shuffle_buffer)``, ``decode("pilrgb")``,
    ``to_tuple("jpg;png;webp", "txt")``, the open_clip train transform, the
    tokenizer and ``batched(batch_size)``, run in a torch ``DataLoader`` with
    ``num_workers`` processes (default ``os.cpu_count()``). The last partial
    batch of each worker is kept.

    Args:
        shards: tar paths; each worker reads whole shards, so give at least
            ``num_workers`` of them.
        batch_size: samples per batch.
        image_size: output side S in pixels.
        num_workers: DataLoader worker processes (``os.cpu_count()`` if None).
        shuffle_buffer: webdataset sample shuffle buffer.
        mask: ``"released"`` (:func:`released_style_keep_indices`), ``"none"``,
            or a pgs_dali strategy name computed with
            :func:`pgs_dali.masking.keep_indices`.
        mask_ratio: mask ratio rho.
        patch_size: ViT patch size p.
        device: where batches go and the mask runs.
        seed: seed of the tie-breaking noise of the released-style mask.
        tokenizer: list of captions to (B, 77) int64; the open_clip ViT-B-32
            tokenizer when None.

    Returns:
        An iterable :class:`OpenClipStyleLoader`.
    """
    import webdataset as wds

    if not shards:
        raise ValueError("shards is empty; check the path or glob")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if num_workers > len(shards):
        logger.warning(
            "%d workers but only %d shards: %d workers will have nothing to read",
            num_workers,
            len(shards),
            num_workers - len(shards),
        )
    if tokenizer is None:
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-32")

    def tokenize_one(caption: str) -> torch.Tensor:
        return tokenizer([caption])[0]

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(shards)),
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.shuffle(shuffle_buffer),
        wds.decode("pilrgb"),
        wds.to_tuple("jpg;png;webp", "txt"),
        wds.map_tuple(openclip_train_transform(image_size), tokenize_one),
        wds.batched(batch_size, partial=True),
    )
    loader = torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
    )
    return OpenClipStyleLoader(
        loader,
        mask=mask,
        mask_ratio=mask_ratio,
        patch_size=patch_size,
        device=torch.device(device),
        seed=seed,
    )
