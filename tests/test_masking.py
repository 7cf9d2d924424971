"""Contract, determinism, argument checks and hand-checkable cases of keep_indices."""

from __future__ import annotations

import math

import pytest
import torch
from reference_pgs import synthetic_photos

from pgs_dali.masking import STRATEGIES, MaskConfig, edge_scores, keep_indices, sample_key_ids

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
RANDOM_STRATEGIES = [name for name in STRATEGIES if name != "none"]


def config_for(strategy: str, **overrides) -> MaskConfig:
    return MaskConfig(strategy=strategy, **overrides)


def keys_for(count: int, prefix: str = "shard-000000") -> list[str]:
    return [f"{prefix}/{index:06d}" for index in range(count)]


def assert_valid_rows(keep: torch.Tensor, num_kept: int, num_patches: int) -> None:
    assert keep.dtype == torch.int64
    assert keep.ndim == 2
    assert keep.shape[1] == num_kept
    if keep.shape[1] > 1:
        assert bool((keep.diff(dim=1) > 0).all()), "indices must be strictly ascending"
    if keep.numel():
        assert int(keep.min()) >= 0
        assert int(keep.max()) < num_patches


# Contract --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_contract_every_strategy(strategy, device, dtype):
    images = synthetic_photos(5, seed=11)
    if dtype == torch.float32:
        images = images.to(torch.float32) / 255.0
    images = images.to(device)
    config = config_for(strategy)

    keep = keep_indices(images, config, keys=keys_for(5), epoch=0)

    assert keep.device == images.device
    assert keep.shape[0] == 5
    assert_valid_rows(keep, config.num_kept(224, 224), 196)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_non_square_odd_grid(strategy):
    # 7 x 9 patches of 16 px: odd in both directions.
    images = synthetic_photos(3, height=112, width=144, seed=12)
    config = config_for(strategy, mask_ratio=0.4, candidate_ratio=0.1)

    keep = keep_indices(images, config, keys=keys_for(3))

    assert_valid_rows(keep, config.num_kept(112, 144), 63)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_patch_14(strategy):
    images = synthetic_photos(2, height=224, width=224, seed=13)[:, :, :210, :196]
    config = config_for(strategy, patch_size=14)

    keep = keep_indices(images, config, keys=keys_for(2))

    assert_valid_rows(keep, config.num_kept(210, 196), 15 * 14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_accepted(dtype):
    images = (synthetic_photos(2, seed=14).to(torch.float32) / 255.0).to(dtype)

    keep = keep_indices(images, MaskConfig(), keys=keys_for(2))

    assert_valid_rows(keep, 98, 196)


def test_none_keeps_every_patch():
    keep = keep_indices(synthetic_photos(3, seed=15), MaskConfig(strategy="none"))

    assert torch.equal(keep, torch.arange(196).expand(3, 196))


def test_pgs_without_masked_patches_keeps_all():
    # round(196 * 0.002) = 0 patches to mask.
    config = MaskConfig(mask_ratio=0.002, candidate_ratio=0.001)

    keep = keep_indices(synthetic_photos(2, seed=16), config)

    assert torch.equal(keep, torch.arange(196).expand(2, 196))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_batch(strategy):
    images = torch.zeros(0, 3, 64, 64, dtype=torch.uint8)
    config = config_for(strategy)

    keep = keep_indices(images, config, keys=[])

    assert keep.shape == (0, config.num_kept(64, 64))
    assert keep.dtype == torch.int64


def test_input_not_modified():
    images = synthetic_photos(2, seed=17).to(torch.float32) / 255.0
    before = images.clone()

    keep_indices(images, MaskConfig(), keys=keys_for(2))
    keep_indices(images, MaskConfig(strategy="cluster"), keys=keys_for(2))

    assert torch.equal(images, before)


def test_input_not_modified_single_patch():
    # One patch covering the whole image: the patch view of a float32 image
    # needs no copy, so the centering must not write into the caller's tensor.
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = images.clone()

    keep_indices(images, MaskConfig(strategy="cluster", mask_ratio=0.0), keys=keys_for(2))
    keep_indices(images, MaskConfig(strategy="cluster", mask_ratio=0.5, patch_size=8), keys=keys_for(2))

    assert torch.equal(images, before)


@pytest.mark.parametrize("strategy", ["pgs", "cluster"])
def test_non_contiguous_input(strategy):
    images = synthetic_photos(3, seed=18)
    height_width_channels = images.permute(0, 2, 3, 1).contiguous()
    view = height_width_channels.permute(0, 3, 1, 2)
    assert not view.is_contiguous()

    from_view = keep_indices(view, config_for(strategy), keys=keys_for(3))

    assert torch.equal(from_view, keep_indices(images, config_for(strategy), keys=keys_for(3)))


def test_input_requiring_grad():
    images = (synthetic_photos(2, seed=19).to(torch.float32) / 255.0).requires_grad_()

    keep = keep_indices(images, MaskConfig(), keys=keys_for(2))
    scores = edge_scores(images, MaskConfig())

    assert not keep.requires_grad
    assert not scores.requires_grad
    assert torch.equal(keep, keep_indices(images.detach(), MaskConfig(), keys=keys_for(2)))


# Determinism -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_row_independent_of_batch(strategy):
    config = config_for(strategy)
    pool = synthetic_photos(17, seed=21)
    keys = keys_for(17, prefix="det")
    target = 3
    alone = keep_indices(pool[target : target + 1], config, keys=[keys[target]], epoch=4)[0]

    for size, position in [(5, 0), (5, 4), (17, 11)]:
        order = [index for index in range(17) if index != target][: size - 1]
        order.insert(position, target)
        keep = keep_indices(pool[order], config, keys=[keys[index] for index in order], epoch=4)
        assert torch.equal(keep[position], alone), f"batch of {size}, position {position}"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_call_twice_same_result(strategy):
    images = synthetic_photos(4, seed=22)
    config = config_for(strategy)

    first = keep_indices(images, config, keys=keys_for(4), epoch=1)
    second = keep_indices(images, config, keys=keys_for(4), epoch=1)

    assert torch.equal(first, second)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_global_rng_untouched(strategy):
    images = synthetic_photos(3, seed=23)
    torch.manual_seed(1234)
    state = torch.get_rng_state()

    keep_indices(images, config_for(strategy), keys=keys_for(3))

    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("strategy", RANDOM_STRATEGIES)
def test_epoch_key_seed_change_mask(strategy):
    images = synthetic_photos(8, seed=24)
    keys = keys_for(8)
    base = keep_indices(images, config_for(strategy), keys=keys, epoch=0)

    other_epoch = keep_indices(images, config_for(strategy), keys=keys, epoch=1)
    other_keys = keep_indices(images, config_for(strategy), keys=keys_for(8, prefix="other"), epoch=0)
    other_seed = keep_indices(images, config_for(strategy, seed=1), keys=keys, epoch=0)

    # Each image may keep the same set by chance; across 8 images it must not.
    assert not torch.equal(base, other_epoch)
    assert not torch.equal(base, other_keys)
    assert not torch.equal(base, other_seed)


def test_key_forms_agree():
    images = synthetic_photos(4, seed=25)
    keys = keys_for(4)

    from_strings = keep_indices(images, MaskConfig(), keys=keys)
    from_ids = keep_indices(images, MaskConfig(), keys=sample_key_ids(keys))
    from_tuple = keep_indices(images, MaskConfig(), keys=tuple(keys))

    assert torch.equal(from_strings, from_ids)
    assert torch.equal(from_strings, from_tuple)


def test_no_keys_means_batch_position():
    images = synthetic_photos(4, seed=26)

    implicit = keep_indices(images, MaskConfig(strategy="random"))
    explicit = keep_indices(images, MaskConfig(strategy="random"), keys=torch.arange(4))

    assert torch.equal(implicit, explicit)


def test_identical_images_differ_by_key():
    image = synthetic_photos(1, seed=27)
    images = image.expand(6, -1, -1, -1)

    keep = keep_indices(images, MaskConfig(), keys=keys_for(6))

    assert len({tuple(row.tolist()) for row in keep}) > 1


def test_reduced_matmul_precision_ignored():
    images = synthetic_photos(4, seed=29)
    default = keep_indices(images, MaskConfig(), keys=keys_for(4))

    # What torch.set_float32_matmul_precision("medium") sets for oneDNN.
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        reduced = keep_indices(images, MaskConfig(), keys=keys_for(4))
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous

    assert torch.equal(reduced, default)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpu_and_cuda_agree(strategy):
    images = synthetic_photos(6, seed=28)
    config = config_for(strategy)

    on_cpu = keep_indices(images, config, keys=keys_for(6), epoch=3)
    on_cuda = keep_indices(images.cuda(), config, keys=keys_for(6), epoch=3)

    assert torch.equal(on_cpu, on_cuda.cpu())


# Argument checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.zeros(2, 3, 32, 32).numpy(), TypeError, "images must be a torch.Tensor"),
        (torch.zeros(3, 32, 32), ValueError, r"shape \(B, 3, H, W\).*\(3, 32, 32\)"),
        (torch.zeros(2, 4, 32, 32), ValueError, r"shape \(B, 3, H, W\).*\(2, 4, 32, 32\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int16), TypeError, "uint8 or floating point, got torch.int16"),
        (torch.zeros(2, 3, 32, 40), ValueError, "32x40 is not divisible by patch_size 16"),
    ],
    ids=["numpy", "3-d", "4-channels", "int16", "indivisible"],
)
def test_rejects_bad_images(images, error, message):
    with pytest.raises(error, match=message):
        keep_indices(images, MaskConfig())
    if isinstance(images, torch.Tensor):
        with pytest.raises(error, match=message):
            edge_scores(images, MaskConfig())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("strategy", ["pgs", "random"])
def test_rejects_non_finite_pixels(value, strategy):
    images = torch.rand(2, 3, 32, 32)
    images[1, 2, 5, 7] = value

    with pytest.raises(ValueError, match="NaN or infinite"):
        keep_indices(images, MaskConfig(strategy=strategy))


def test_rejects_huge_pixels():
    images = torch.full((1, 3, 32, 32), 3e37)

    with pytest.raises(ValueError, match="values up to 3e\\+37"):
        keep_indices(images, MaskConfig())


def test_rejects_image_smaller_than_edge_scale():
    with pytest.raises(ValueError, match="smaller than edge_scale 8"):
        keep_indices(torch.zeros(1, 3, 4, 4), MaskConfig(patch_size=4, edge_scale=8))


def test_rejects_ratio_that_keeps_nothing():
    # round(4 * 0.9) = 4 of the 4 patches would be masked.
    with pytest.raises(ValueError, match="masks all 4 patches of a 32x32 image"):
        keep_indices(torch.zeros(1, 3, 32, 32), MaskConfig(strategy="random", mask_ratio=0.9))


@pytest.mark.parametrize(
    ("keys", "error", "message"),
    [
        (["a", "b", "c"], ValueError, "keys has 3 entries but images has batch size 2"),
        (torch.tensor([1, 2, 3]), ValueError, "keys has 3 entries"),
        ("ab", TypeError, "sequence of strings, got a single string"),
        (["a", 2], TypeError, r"keys\[1\] must be a str, got int"),
        (torch.tensor([1.0, 2.0]), TypeError, "1-D int64 sample ids, got torch.float32"),
        (torch.tensor([[1, 2]]), TypeError, r"with shape \(1, 2\)"),
        (7, TypeError, "keys must be None, a sequence of strings or an int64 tensor, got int"),
    ],
    ids=["too-many", "tensor-too-many", "string", "non-string", "float-tensor", "2-d-tensor", "int"],
)
def test_rejects_bad_keys(keys, error, message):
    with pytest.raises(error, match=message):
        keep_indices(torch.zeros(2, 3, 32, 32), MaskConfig(), keys=keys)


@pytest.mark.parametrize(
    ("epoch", "error", "message"),
    [
        (-1, ValueError, r"epoch must be in \[0, 2\*\*64\), got -1"),
        (2**64, ValueError, "epoch must be in"),
        (1.0, TypeError, "epoch must be an int, got float"),
        (True, TypeError, "epoch must be an int, got bool"),
    ],
)
def test_rejects_bad_epoch(epoch, error, message):
    with pytest.raises(error, match=message):
        keep_indices(torch.zeros(1, 3, 32, 32), MaskConfig(), epoch=epoch)


def test_rejects_bad_config():
    with pytest.raises(TypeError, match="config must be a MaskConfig, got dict"):
        keep_indices(torch.zeros(1, 3, 32, 32), {"strategy": "pgs"})


def test_config_rejects_seed_beyond_64_bits():
    with pytest.raises(ValueError, match=r"seed must be < 2\*\*64"):
        MaskConfig(seed=2**64)


# Constant and single-colour images -------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (200, 30, 90)], ids=["black", "white", "red"])
def test_single_colour_images(strategy, colour):
    images = torch.tensor(colour, dtype=torch.uint8).reshape(1, 3, 1, 1).expand(3, 3, 64, 96).contiguous()
    config = config_for(strategy)

    keep = keep_indices(images, config, keys=keys_for(3))

    assert_valid_rows(keep, config.num_kept(64, 96), 24)
    assert torch.equal(edge_scores(images, config), torch.zeros(3, 24))


def test_constant_float_image_pgs():
    images = torch.full((2, 3, 224, 224), 0.37)

    keep = keep_indices(images, MaskConfig(), keys=keys_for(2))

    assert_valid_rows(keep, 98, 196)


# Hand-checkable cases --------------------------------------------------------


def textured_square_scene(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Make images of a textured square object on a smooth ramp background.

    Returns the (count, 3, 224, 224) float images and the (196,) bool mask of
    the patches inside the object (rows and columns 4..9 of the 14 x 14 grid).
    """
    generator = torch.Generator().manual_seed(5)
    ramp = torch.linspace(0.2, 0.6, 224).expand(224, 224)
    images = ramp.expand(count, 3, 224, 224).clone()
    blocks = torch.rand(count, 3, 12, 12, generator=generator)
    images[:, :, 64:160, 64:160] = torch.nn.functional.interpolate(blocks, scale_factor=8, mode="nearest")
    grid = torch.zeros(14, 14, dtype=torch.bool)
    grid[4:10, 4:10] = True
    return images, grid.flatten()


def test_pgs_keeps_most_of_object():
    images, object_patches = textured_square_scene(8)

    keep = keep_indices(images, MaskConfig(mask_ratio=0.5), keys=keys_for(8))

    kept = torch.zeros(8, 196, dtype=torch.bool).scatter_(1, keep, True)
    retention = kept[:, object_patches].float().mean()
    # Random masking keeps 0.5 of the object on average; PGS steers away from it.
    assert float(retention) > 0.9


def test_edge_scores_peak_on_object():
    images, object_patches = textured_square_scene(2)

    scores = edge_scores(images, MaskConfig())

    assert scores.shape == (2, 196)
    assert scores.dtype == torch.float32
    assert float(scores.min()) == 0.0
    assert float(scores.max()) == 1.0
    assert float(scores[:, object_patches].mean()) > 5 * float(scores[:, ~object_patches].mean())


@pytest.mark.parametrize("device", DEVICES)
def test_edge_scores_device(device):
    scores = edge_scores(synthetic_photos(2, seed=31).to(device), MaskConfig())

    assert scores.device == torch.device(device) or scores.device.type == device


@pytest.mark.parametrize(("rows", "cols"), [(14, 14), (7, 9), (1, 5)])
def test_grid_one_per_window(rows, cols):
    images = torch.zeros(16, 3, rows * 16, cols * 16, dtype=torch.uint8)

    keep = keep_indices(images, MaskConfig(strategy="grid"), keys=keys_for(16))

    kept = torch.zeros(16, rows * cols, dtype=torch.int64).scatter_(1, keep, 1).reshape(16, rows, cols)
    padded = torch.nn.functional.pad(kept, (0, cols % 2, 0, rows % 2))
    per_window = padded.reshape(16, (rows + 1) // 2, 2, (cols + 1) // 2, 2).sum(dim=(2, 4))
    assert torch.equal(per_window, torch.ones_like(per_window))


def test_grid_uses_every_cell():
    keep = keep_indices(torch.zeros(64, 3, 32, 32), MaskConfig(strategy="grid"), keys=keys_for(64))

    # A 2 x 2 grid is one window: over 64 samples each of its 4 cells is drawn.
    assert set(keep[:, 0].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(("rows", "cols", "mask_ratio"), [(14, 14, 0.5), (7, 9, 0.3), (14, 14, 0.9), (3, 20, 0.5)])
def test_block_keeps_one_rectangle(rows, cols, mask_ratio):
    config = MaskConfig(strategy="block", mask_ratio=mask_ratio)
    num_kept = config.num_kept(rows * 16, cols * 16)
    images = torch.zeros(32, 3, rows * 16, cols * 16, dtype=torch.uint8)

    keep = keep_indices(images, config, keys=keys_for(32))

    for row in keep:
        kept = torch.zeros(rows * cols, dtype=torch.bool)
        kept[row] = True
        kept = kept.reshape(rows, cols)
        kept_rows = kept.any(dim=1).nonzero().flatten()
        kept_cols = kept.any(dim=0).nonzero().flatten()
        top, bottom = int(kept_rows.min()), int(kept_rows.max())
        left, right = int(kept_cols.min()), int(kept_cols.max())
        box = kept[top : bottom + 1, left : right + 1]
        height, width = box.shape
        missing = (~box).nonzero()

        # A height x width box, complete except for a run at one end of its
        # first or last row, with (height - 1) * width < K <= height * width.
        assert (height - 1) * width < num_kept <= height * width
        if len(missing):
            assert len(set(missing[:, 0].tolist())) == 1
            assert int(missing[0, 0]) in (0, height - 1)
            missing_cols = sorted(missing[:, 1].tolist())
            assert missing_cols == list(range(missing_cols[0], missing_cols[-1] + 1))
            assert missing_cols[0] == 0 or missing_cols[-1] == width - 1


def test_block_shapes_vary():
    keep = keep_indices(torch.zeros(32, 3, 224, 224), MaskConfig(strategy="block"), keys=keys_for(32))

    assert len({tuple(row.tolist()) for row in keep}) > 16


def test_gaussian_keeps_centre():
    keep = keep_indices(torch.zeros(64, 3, 224, 224), MaskConfig(strategy="gaussian"), keys=keys_for(64))

    kept = torch.zeros(64, 196, dtype=torch.bool).scatter_(1, keep, True).reshape(64, 14, 14)
    # g >= 0.88 at the four centre patches, so U - (1 - g) beats the
    # background patches' U - 1 in every sample.
    assert bool(kept[:, 6:8, 6:8].all())
    corners = kept[:, [0, 0, 13, 13], [0, 13, 0, 13]].float().mean()
    assert 0.2 < float(corners) < 0.7


def test_random_keeps_each_patch_evenly():
    keep = keep_indices(torch.zeros(256, 3, 224, 224), MaskConfig(strategy="random"), keys=keys_for(256))

    frequency = torch.zeros(256, 196).scatter_(1, keep, 1.0).mean(dim=0)
    # Each patch is kept with probability 0.5: 256 draws give a standard
    # deviation of about 0.031, and 0.25 lies 8 of them away.
    assert float(frequency.min()) > 0.25
    assert float(frequency.max()) < 0.75
    assert abs(float(frequency.mean()) - 0.5) < 1e-6


def test_cluster_masks_similar_region():
    # Left half: a horizontal ramp, whose patches all have the same
    # standardized pixel vector (cosine 1). Right half: independent noise.
    generator = torch.Generator().manual_seed(9)
    images = torch.rand(16, 3, 224, 224, generator=generator)
    images[:, :, :, :112] = torch.linspace(0.0, 1.0, 112).repeat(1, 1, 224, 1)[..., :112] * 0.5 + 0.2
    ramp = torch.zeros(14, 14, dtype=torch.bool)
    ramp[:, :7] = True
    ramp = ramp.flatten()

    keep = keep_indices(images, MaskConfig(strategy="cluster", mask_ratio=0.5), keys=keys_for(16))

    kept = torch.zeros(16, 196, dtype=torch.bool).scatter_(1, keep, True)
    has_ramp_anchor = ~kept[:, ramp].all(dim=1)
    assert bool(has_ramp_anchor.any())
    # When an anchor lands on the ramp the whole ramp clusters and is masked
    # first, so nearly all kept patches lie in the noise half.
    kept_in_noise = kept[has_ramp_anchor][:, ~ramp].float().sum(dim=1) / 98
    assert float(kept_in_noise.min()) > 0.9
