"""Tests for get_data, add_pgs_args and DataInfo of the open_clip integration."""

from __future__ import annotations

import argparse

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from loader_helpers import write_generated_shards  # noqa: E402
from pgs_dali.integrations.open_clip import (  # noqa: E402
    DataInfo,
    EpochCounter,
    add_pgs_args,
    get_data,
    install_pgs,
)
from pgs_dali.integrations.tokens import ImagesWithKeepIndices  # noqa: E402
from open_clip_helpers import IMAGE_SIZE, NUM_PATCHES, record_token_counts, tiny_clip  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_generated_shards(tmp_path_factory.mktemp("clip-shards"), num_shards=2, per_shard=8)


def make_args(shards, *extra: str, **attributes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pgs_args(parser)
    args = parser.parse_args(["--pgs-device", "cpu", *extra])
    args.train_data = "::".join(shards)
    args.batch_size = 4
    args.workers = 1
    args.seed = 0
    args.rank = 0
    args.world_size = 1
    for name, value in attributes.items():
        setattr(args, name, value)
    return args


class TestAddPgsArgs:
    def test_defaults(self):
        args = add_pgs_args(argparse.ArgumentParser()).parse_args([])
        assert args.pgs_strategy == "pgs"
        assert args.pgs_mask_ratio == 0.5
        assert args.pgs_patch_size is None
        assert args.pgs_image_size is None

    def test_rejects_unknown_strategy(self):
        parser = add_pgs_args(argparse.ArgumentParser())
        with pytest.raises(SystemExit):
            parser.parse_args(["--pgs-strategy", "nonsense"])


class TestGetData:
    def test_yields_images_with_indices_and_texts(self, shards):
        model = tiny_clip()
        data = get_data(make_args(shards), model=model)
        info = data["train"]
        assert isinstance(info, DataInfo)
        assert info.sampler is None
        assert info.dataloader.num_batches == 4
        assert info.dataloader.num_samples == 16
        assert len(info.dataloader) == 4

        batches = list(info.dataloader)
        assert len(batches) == 4
        images, texts = batches[0]
        assert isinstance(images, ImagesWithKeepIndices)
        assert images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert images.keep_indices.shape == (4, NUM_PATCHES // 2)
        assert texts.shape == (4, 77)
        assert texts.dtype == torch.int64

    def test_batches_drive_model_with_kept_tokens(self, shards):
        model = tiny_clip()
        install_pgs(model)
        counts = record_token_counts(model)
        model.train()
        data = get_data(make_args(shards, "--pgs-mask-ratio", "0.25"), model=model)
        images, texts = next(iter(data["train"].dataloader))
        images = images.to(device="cpu", dtype=torch.float32, non_blocking=True)
        image_features, text_features, logit_scale = model(images, texts)
        open_clip.ClipLoss()(image_features, text_features, logit_scale).backward()
        assert counts == [1 + NUM_PATCHES - NUM_PATCHES // 4]

    def test_sizes_from_args_override_model(self, shards):
        data = get_data(make_args(shards, "--pgs-image-size", "32", "--pgs-patch-size", "8"), model=tiny_clip())
        images, _ = next(iter(data["train"].dataloader))
        assert images.shape[-2:] == (32, 32)
        assert images.keep_indices.shape == (4, 8)

    def test_image_size_from_preprocess(self, shards):
        import torchvision.transforms as transforms

        preprocess = transforms.Compose([transforms.RandomResizedCrop(48), transforms.ToTensor()])
        data = get_data(make_args(shards), preprocess_fns=(preprocess, preprocess))
        images, _ = next(iter(data["train"].dataloader))
        assert images.shape[-2:] == (48, 48)
        assert images.keep_indices.shape == (4, 9 - round(9 * 0.5))

    def test_normalization_from_model(self, shards):
        model = tiny_clip()
        open_clip.model.set_model_preprocess_cfg(
            model, {"size": IMAGE_SIZE, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        )
        config = get_data(make_args(shards), model=model)["train"].dataloader.loader.config
        assert config.mean == (0.5, 0.5, 0.5)
        assert config.std == (0.25, 0.25, 0.25)

    def test_normalization_from_preprocess(self, shards):
        import torchvision.transforms as transforms

        preprocess = transforms.Compose(
            [transforms.RandomResizedCrop(32), transforms.ToTensor(), transforms.Normalize((0.1, 0.2, 0.3), (1, 2, 3))]
        )
        config = get_data(make_args(shards), preprocess_fns=(preprocess, preprocess))["train"].dataloader.loader.config
        assert config.mean == (0.1, 0.2, 0.3)
        assert config.std == (1.0, 2.0, 3.0)

    def test_default_normalization_is_clip(self, shards):
        from pgs_dali.loader import CLIP_MEAN, CLIP_STD

        config = get_data(make_args(shards), model=tiny_clip())["train"].dataloader.loader.config
        assert config.mean == CLIP_MEAN
        assert config.std == CLIP_STD

    def test_train_num_samples_caps_batches(self, shards):
        data = get_data(make_args(shards, train_num_samples=8), model=tiny_clip())
        dataloader = data["train"].dataloader
        assert dataloader.num_batches == 2
        assert dataloader.num_samples == 8
        assert len(list(dataloader)) == 2
        # The next epoch continues with the samples the first did not reach.
        assert len(list(dataloader)) == 2
        assert dataloader.loader.summary()["delivered"] == 16
        # The third starts the loader's next pass.
        assert len(list(dataloader)) == 2
        assert dataloader.loader.summary()["delivered"] == 8

    def test_set_epoch_reseeds_masks(self, shards):
        # "random" masks depend on seed, epoch and sample key only, not on the
        # randomly cropped pixels, and shuffle buffer 0 keeps the sample order.
        args = make_args(shards, "--pgs-shuffle-buffer", "0", "--pgs-strategy", "random")
        data = get_data(args, model=tiny_clip())
        info = data["train"]

        def first_indices(epoch):
            info.set_epoch(epoch)
            return [images.keep_indices for images, _ in info.dataloader]

        epoch_zero = first_indices(0)
        epoch_one = first_indices(1)
        epoch_zero_again = first_indices(0)
        assert info.shared_epoch.get_value() == 0
        assert all(torch.equal(a, b) for a, b in zip(epoch_zero, epoch_zero_again))
        assert not all(torch.equal(a, b) for a, b in zip(epoch_zero, epoch_one))

    def test_missing_train_data(self, shards):
        args = make_args(shards)
        args.train_data = None
        with pytest.raises(ValueError, match="args.train_data is missing"):
            get_data(args)

    def test_rejects_non_square_model(self, shards):
        model = tiny_clip(image_size=(64, 32))
        with pytest.raises(ValueError, match=r"square crops, but the model's image size is \(64, 32\)"):
            get_data(make_args(shards), model=model)


def test_epoch_counter_methods():
    counter = EpochCounter(3)
    counter.set_value(5)
    assert counter.get_value() == 5
