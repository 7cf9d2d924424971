"""Tests for the reference-style baselines in pgs_dali.baselines."""

from __future__ import annotations

import pytest
import torch

from pgs_dali.baselines import (
    CLIP_MEAN,
    build_openclip_style_loader,
    openclip_train_transform,
    released_style_keep_indices,
)

from loader_helpers import fast_tokenizer, write_generated_shards


def photo_batch(batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator) * 0.2
    images[:, :, size // 4 : size // 2, size // 4 : size // 2] += 0.7
    return images


class TestReleasedStyle:
    def test_shapes_and_sorted_unique(self):
        out = released_style_keep_indices(photo_batch(), 0.5)
        keep = out.keep_indices
        assert keep.shape == (4, 8)
        assert keep.dtype == torch.int64
        assert (keep.diff(dim=1) > 0).all()
        assert keep.min() >= 0
        assert keep.max() < 16

    @pytest.mark.parametrize("mask_ratio, kept", [(0.0, 196), (0.3, 137), (0.75, 49)])
    def test_keeps_fixed_count(self, mask_ratio, kept):
        out = released_style_keep_indices(photo_batch(2, 224), mask_ratio, attention_mask=False)
        assert out.keep_indices.shape == (2, kept)
        assert out.attention_mask is None

    def test_same_generator_same_mask(self):
        images = photo_batch()
        first = released_style_keep_indices(images, 0.5, generator=torch.Generator().manual_seed(3))
        second = released_style_keep_indices(images, 0.5, generator=torch.Generator().manual_seed(3))
        assert torch.equal(first.keep_indices, second.keep_indices)

    def test_attention_mask_is_head_major(self):
        # Each image gets its own set of blocked tokens. The mask at flat
        # index h * B + b must be image b's, whatever the head h.
        images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        out = released_style_keep_indices(images, 0.5, num_heads=4, similarity_threshold=0.0)
        attention = out.attention_mask
        assert attention.shape == (12, 9, 9)
        for head in range(4):
            for image in range(3):
                assert torch.equal(attention[head * 3 + image], attention[image])
        assert attention[:, :, 0].all()  # CLS is always attendable

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="50x64"):
            released_style_keep_indices(torch.rand(1, 3, 50, 64), 0.5)
        with pytest.raises(ValueError, match=r"\(1, 64, 64\)"):
            released_style_keep_indices(torch.rand(1, 64, 64), 0.5)
        with pytest.raises(ValueError, match="1.0"):
            released_style_keep_indices(torch.rand(1, 3, 64, 64), 1.0)


class TestOpenClipStyle:
    def test_transform_output(self):
        from PIL import Image

        image = Image.new("RGB", (120, 90), color=(255, 255, 255))
        tensor = openclip_train_transform(64)(image)
        assert tensor.shape == (3, 64, 64)
        expected = (1.0 - CLIP_MEAN[0]) / 0.26862954
        assert tensor[0].mean().item() == pytest.approx(expected, abs=1e-3)

    def test_loader_yields_every_sample(self, tmp_path):
        shards = write_generated_shards(tmp_path, num_shards=2, per_shard=5)
        loader = build_openclip_style_loader(
            shards, batch_size=4, image_size=32, num_workers=2, tokenizer=fast_tokenizer
        )
        batches = list(loader)
        assert sum(len(b["image"]) for b in batches) == 10
        first = batches[0]
        assert first["image"].shape[1:] == (3, 32, 32)
        assert first["text"].dtype == torch.int64
        assert first["keep_indices"].shape[1] == 2  # 4 patches, half masked

    def test_pgs_dali_strategy_in_process(self, tmp_path):
        shards = write_generated_shards(tmp_path, num_shards=1, per_shard=4)
        loader = build_openclip_style_loader(
            shards, batch_size=4, image_size=64, num_workers=1, mask="random",
            mask_ratio=0.75, tokenizer=fast_tokenizer,
        )
        keep = next(iter(loader))["keep_indices"]
        assert keep.shape == (4, 4)  # 16 patches, 12 masked
        assert (keep.diff(dim=1) > 0).all()

    def test_no_mask(self, tmp_path):
        shards = write_generated_shards(tmp_path, num_shards=1, per_shard=3)
        loader = build_openclip_style_loader(
            shards, batch_size=8, image_size=32, num_workers=1, mask="none", tokenizer=fast_tokenizer
        )
        batches = list(loader)
        assert len(batches) == 1
        assert "keep_indices" not in batches[0]

    def test_rejects_empty_shard_list(self):
        with pytest.raises(ValueError, match="shards is empty"):
            build_openclip_style_loader([], batch_size=4)
