"""Small open_clip models and inputs shared by the open_clip integration tests."""

from __future__ import annotations

import copy

import open_clip
import torch
from torch import nn

IMAGE_SIZE = 64
PATCH_SIZE = 16
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "width": 64,
        "layers": 2,
        "head_width": 32,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clip(**vision_overrides) -> nn.Module:
    """Build a seeded CLIP with a 2-block, 64-wide ViT on 64 px images (16 patches)."""
    torch.manual_seed(0)
    config = copy.deepcopy(TINY_CONFIG)
    config["vision_cfg"].update(vision_overrides)
    return open_clip.CLIP(**config)


def images_batch(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def random_keep(batch: int, kept: int, seed: int = 2) -> torch.Tensor:
    """Return (batch, kept) sorted random patch indices of the 4 x 4 grid."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.randperm(NUM_PATCHES, generator=generator)[:kept].sort().values for _ in range(batch)]
    )


def record_token_counts(model: nn.Module) -> list[int]:
    """Return a list that gets the token count of every input to the first vision block."""
    counts: list[int] = []
    model.visual.transformer.resblocks[0].register_forward_pre_hook(
        lambda module, args: counts.append(args[0].shape[1])
    )
    return counts
