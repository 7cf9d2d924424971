"""The batched ``"pgs"`` strategy against the per-image NumPy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reference_pgs import reference_keep_indices, synthetic_photos

from pgs_dali.masking import MaskConfig, keep_indices, sample_key_ids

COCO_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "images"


def assert_matches_reference(images: torch.Tensor, config: MaskConfig, keys: list[str], epoch: int) -> None:
    batched = keep_indices(images, config, keys=keys, epoch=epoch)
    key_ids = sample_key_ids(keys)
    for index in range(images.shape[0]):
        expected = reference_keep_indices(images[index].numpy(), config, int(key_ids[index]), epoch)
        np.testing.assert_array_equal(
            batched[index].numpy(), expected, err_msg=f"image {index} ({keys[index]}), {config}"
        )


def flat_scenes() -> torch.Tensor:
    """A constant image and a flat square on a flat background: many exact ties."""
    constant = torch.full((1, 3, 224, 224), 128, dtype=torch.uint8)
    square = torch.full((1, 3, 224, 224), 30, dtype=torch.uint8)
    square[:, :, 64:160, 80:176] = 200
    return torch.cat([constant, square])


@pytest.mark.parametrize(
    "config",
    [
        MaskConfig(),
        MaskConfig(mask_ratio=0.3, neighborhood_radius=3, seed=7),
        MaskConfig(mask_ratio=0.75, candidate_ratio=0.1, epsilon=0.05, sinkhorn_iters=5),
        MaskConfig(edge_scale=1, edge_weight=2.0, candidate_edge_bias=0.0),
        # |logit| up to 1000: the plain logsumexp branch of the Sinkhorn.
        MaskConfig(epsilon=0.001, sinkhorn_iters=3),
    ],
    ids=["defaults", "neighborhood", "high-ratio", "no-pooling", "tiny-epsilon"],
)
def test_pgs_matches_reference_generated(config):
    images = torch.cat([synthetic_photos(6, seed=1), flat_scenes()])
    keys = [f"generated/{index:04d}" for index in range(images.shape[0])]
    assert_matches_reference(images, config, keys, epoch=2)


def test_pgs_matches_reference_float_input():
    images = synthetic_photos(4, seed=2).to(torch.float32) / 255.0
    assert_matches_reference(images, MaskConfig(), [f"f/{index}" for index in range(4)], epoch=0)


def test_pgs_matches_reference_uneven_pooling():
    # p = 14 is not a multiple of edge_scale 4: the pooled luma comes from the
    # whole image and the patch means use overlapping windows.
    images = synthetic_photos(3, height=210, width=154, seed=3)
    config = MaskConfig(patch_size=14, edge_scale=4)
    assert_matches_reference(images, config, ["u/0", "u/1", "u/2"], epoch=1)


def load_photos(count: int, size: int = 224) -> tuple[torch.Tensor, list[str]]:
    from PIL import Image

    files = sorted(COCO_IMAGES.glob("*.jpg"))[:count]
    photos = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            photos.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(photos), [file.stem for file in files]


@pytest.mark.skipif(not COCO_IMAGES.is_dir(), reason="coco-mini photos not found next to the repository")
@pytest.mark.parametrize(
    "config", [MaskConfig(), MaskConfig(mask_ratio=0.3, neighborhood_radius=2, seed=3)], ids=["defaults", "radius"]
)
def test_pgs_matches_reference_coco_photos(config):
    photos, keys = load_photos(12)
    assert_matches_reference(photos, config, keys, epoch=1)


@pytest.mark.slow
@pytest.mark.skipif(not COCO_IMAGES.is_dir(), reason="coco-mini photos not found next to the repository")
def test_pgs_matches_reference_all_coco_photos():
    photos, keys = load_photos(80)
    for epoch in (0, 5):
        assert_matches_reference(photos, MaskConfig(), keys, epoch=epoch)
