"""Tests for PGSPatchDropout and install_pgs on small open_clip models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

open_clip = pytest.importorskip("open_clip")

from open_clip_helpers import (  # noqa: E402
    IMAGE_SIZE,
    NUM_PATCHES,
    TINY_CONFIG,
    images_batch,
    random_keep,
    record_token_counts,
    tiny_clip,
)
from pgs_dali.integrations.open_clip import PGSPatchDropout, install_pgs  # noqa: E402
from pgs_dali.integrations.tokens import gather_tokens, with_keep_indices  # noqa: E402


class _FixedGather(nn.Module):
    """Reference patch dropout: gathers with fixed indices through gather_tokens."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_tokens(x, self.keep) if self.training else x


class TestInstall:
    def test_replaces_patch_dropout(self):
        model = tiny_clip()
        pgs = install_pgs(model)
        assert model.visual.patch_dropout is pgs
        assert pgs.num_prefix_tokens == 1

    def test_replaces_random_patch_dropout(self):
        model = tiny_clip(patch_dropout=0.5)
        assert type(model.visual.patch_dropout).__name__ == "PatchDropout"
        assert isinstance(install_pgs(model), PGSPatchDropout)

    def test_install_twice_returns_same_module(self):
        model = tiny_clip()
        assert install_pgs(model) is install_pgs(model)

    def test_accepts_vision_tower(self):
        model = tiny_clip()
        assert install_pgs(model.visual) is model.visual.patch_dropout

    def test_follows_model_mode(self):
        model = tiny_clip()
        model.eval()
        assert not install_pgs(model).training

    def test_rejects_resnet_tower(self):
        model = open_clip.CLIP(
            embed_dim=32,
            vision_cfg={"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
            text_cfg=TINY_CONFIG["text_cfg"],
        )
        with pytest.raises(TypeError, match="got ModifiedResNet.*ResNet towers cannot drop patch tokens"):
            install_pgs(model)

    def test_rejects_wrapped_model(self):
        class Wrapper(nn.Module):
            def __init__(self, module):
                super().__init__()
                self.module = module

        with pytest.raises(TypeError, match="before wrapping it in DistributedDataParallel"):
            install_pgs(Wrapper(tiny_clip()))


class TestTrainingForward:
    def test_keep_all_matches_plain_model(self):
        reference = tiny_clip()
        model = tiny_clip()
        install_pgs(model)
        reference.train()
        model.train()
        images = images_batch()
        keep_all = torch.arange(NUM_PATCHES).expand(3, NUM_PATCHES).contiguous()
        expected = reference.encode_image(images)
        result = model.encode_image(with_keep_indices(images, keep_all))
        assert torch.allclose(result, expected, atol=1e-6, rtol=0)

    def test_transformer_sees_k_plus_one_tokens(self):
        model = tiny_clip()
        install_pgs(model)
        counts = record_token_counts(model)
        model.train()
        model.encode_image(with_keep_indices(images_batch(), random_keep(3, 5)))
        assert counts == [1 + 5]

    def test_gathers_before_ln_pre(self):
        model = tiny_clip()
        install_pgs(model)
        shapes = []
        model.visual.ln_pre.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
        model.train()
        model.encode_image(with_keep_indices(images_batch(), random_keep(3, 7)))
        assert shapes == [(3, 1 + 7, 64)]

    def test_matches_reference_gather(self):
        keep = random_keep(3, 8)
        reference = tiny_clip()
        reference.visual.patch_dropout = _FixedGather(keep)
        model = tiny_clip()
        install_pgs(model)
        reference.train()
        model.train()
        images = images_batch()
        expected = reference.encode_image(images)
        result = model.encode_image(with_keep_indices(images, keep))
        assert torch.allclose(result, expected, atol=1e-6, rtol=0)

    def test_mask_changes_features(self):
        model = tiny_clip()
        install_pgs(model)
        model.train()
        images = images_batch()
        full = model.encode_image(with_keep_indices(images, torch.arange(NUM_PATCHES).expand(3, -1)))
        masked = model.encode_image(with_keep_indices(images, random_keep(3, 4)))
        assert not torch.allclose(full, masked)

    def test_backward_reaches_patch_embedding(self):
        model = tiny_clip()
        install_pgs(model)
        model.train()
        images = with_keep_indices(images_batch(), random_keep(3, 6))
        texts = torch.randint(0, 49408, (3, 77))
        image_features, text_features, logit_scale = model(images, texts)
        loss = open_clip.ClipLoss()(image_features, text_features, logit_scale)
        loss.backward()
        assert model.visual.conv1.weight.grad is not None
        assert model.visual.conv1.weight.grad.abs().sum() > 0

    def test_to_dtype_keeps_indices(self):
        # open_clip_train calls images.to(device=..., dtype=input_dtype) before the model.
        model = tiny_clip()
        install_pgs(model)
        counts = record_token_counts(model)
        model.train()
        images = with_keep_indices(images_batch().double(), random_keep(3, 5))
        model.encode_image(images.to(device="cpu", dtype=torch.float32, non_blocking=True))
        assert counts == [6]

    def test_missing_indices_raise(self):
        model = tiny_clip()
        install_pgs(model)
        model.train()
        with pytest.raises(ValueError, match="training mode but the images carry no keep_indices"):
            model.encode_image(images_batch())

    def test_state_cleared_after_error(self):
        model = tiny_clip()
        pgs = install_pgs(model)
        model.train()
        with pytest.raises(ValueError):
            model.encode_image(with_keep_indices(images_batch(), random_keep(3, NUM_PATCHES - 1) + 1))
        assert pgs.current_keep_indices() is None


class TestInvalidIndices:
    @pytest.fixture
    def model(self):
        model = tiny_clip()
        install_pgs(model)
        model.train()
        return model

    def test_too_many_kept(self, model):
        keep = torch.arange(NUM_PATCHES + 1).expand(3, -1)
        with pytest.raises(ValueError, match=f"K={NUM_PATCHES + 1} patches but the image has only N={NUM_PATCHES}"):
            model.encode_image(with_keep_indices(images_batch(), keep))

    def test_out_of_range(self, model):
        keep = torch.tensor([[0, 1], [2, 3], [4, NUM_PATCHES]])
        with pytest.raises(ValueError, match=rf"keep_indices\[2, 1\] = {NUM_PATCHES} is outside"):
            model.encode_image(with_keep_indices(images_batch(), keep))

    def test_unsorted(self, model):
        keep = torch.tensor([[0, 1], [3, 2], [4, 5]])
        with pytest.raises(ValueError, match=r"row 1 must be strictly ascending"):
            model.encode_image(with_keep_indices(images_batch(), keep))

    def test_wrong_batch(self, model):
        pgs = model.visual.patch_dropout
        with pytest.raises(ValueError, match="2 rows but the batch has 3 images"):
            with pgs.use(random_keep(2, 4)):
                model.encode_image(images_batch())


class TestEvalMode:
    def test_eval_is_identity(self):
        reference = tiny_clip()
        model = tiny_clip()
        install_pgs(model)
        reference.eval()
        model.eval()
        counts = record_token_counts(model)
        images = images_batch()
        expected = reference.encode_image(images)
        assert torch.allclose(model.encode_image(images), expected, atol=1e-6, rtol=0)
        masked = with_keep_indices(images, random_keep(3, 4))
        assert torch.allclose(model.encode_image(masked), expected, atol=1e-6, rtol=0)
        assert counts == [1 + NUM_PATCHES, 1 + NUM_PATCHES]


class TestUse:
    def test_use_with_plainimages_batch(self):
        model = tiny_clip()
        pgs = install_pgs(model)
        counts = record_token_counts(model)
        model.train()
        with pgs.use(random_keep(3, 9)):
            model.encode_image(images_batch())
        assert counts == [10]
        assert pgs.current_keep_indices() is None

    def test_carried_indices_take_precedence(self):
        model = tiny_clip()
        pgs = install_pgs(model)
        counts = record_token_counts(model)
        model.train()
        with pgs.use(random_keep(3, 9)):
            model.encode_image(with_keep_indices(images_batch(), random_keep(3, 3)))
        assert counts == [4]

    def test_use_rejects_non_tensor(self):
        pgs = install_pgs(tiny_clip())
        with pytest.raises(TypeError, match="got list"):
            with pgs.use([[0, 1]]):
                pass


class TestGradientAccumulation:
    """Replays micro-batches the way open_clip_train's train_one_epoch does with --accum-freq."""

    def test_replay_uses_each_batch_indices(self):
        model = tiny_clip()
        install_pgs(model)
        counts = record_token_counts(model)
        model.train()
        batches = [
            (with_keep_indices(images_batch(), random_keep(3, kept, seed=kept)), torch.randint(0, 49408, (3, 77)))
            for kept in (4, 8, 12)
        ]

        cached_images, cached_features = [], []
        with torch.no_grad():
            for images, texts in batches:
                images = images.to(device="cpu", dtype=None, non_blocking=True)
                cached_features.append(model(images, texts)[0])
                cached_images.append(images)

        replayed = []
        for images, (_, texts) in zip(cached_images, batches):
            image_features, _, _ = model(images, texts)
            image_features.sum().backward()
            replayed.append(image_features.detach())

        assert counts == [5, 9, 13, 5, 9, 13]
        for cached, replay in zip(cached_features, replayed):
            assert torch.allclose(cached, replay, atol=1e-6, rtol=0)

    def test_micro_batch_slices_carry_rows(self):
        model = tiny_clip()
        install_pgs(model)
        model.train()
        keep = random_keep(4, 6)
        images = with_keep_indices(images_batch(4), keep)
        whole = model.encode_image(images)
        halves = torch.cat([model.encode_image(part) for part in images.chunk(2)])
        assert torch.allclose(whole, halves, atol=1e-5, rtol=0)


class TestTimmTower:
    def test_timm_vit_with_registers(self):
        timm = pytest.importorskip("timm")
        from open_clip.timm_model import TimmModel

        torch.manual_seed(0)
        visual = TimmModel("vit_tiny_patch16_224", embed_dim=32, image_size=224, pretrained=False)
        visual.trunk = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=64, reg_tokens=2, num_classes=0, depth=2
        )
        visual.trunk.reset_classifier(0)
        pgs = install_pgs(visual)
        assert visual.trunk.patch_drop is pgs
        assert pgs.num_prefix_tokens == 3

        counts = []
        visual.trunk.blocks[0].register_forward_pre_hook(lambda module, args: counts.append(args[0].shape[1]))
        visual.train()
        visual(with_keep_indices(images_batch(2), random_keep(2, 5)))
        assert counts == [3 + 5]

    def test_bare_timm_vit(self):
        timm = pytest.importorskip("timm")

        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=1, num_classes=0)
        pgs = install_pgs(vit)
        assert vit.patch_drop is pgs
        assert pgs.num_prefix_tokens == 1

        counts = []
        vit.blocks[0].register_forward_pre_hook(lambda module, args: counts.append(args[0].shape[1]))
        vit.train()
        vit(with_keep_indices(images_batch(2), random_keep(2, 7)))
        assert counts == [1 + 7]
