"""Tests for pgs_dali.retention and the ``pgs-dali retention`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pgs_dali import retention
from pgs_dali.cli import main
from pgs_dali.masking.config import MaskConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def write_tiny_coco(folder: Path, num_images: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """Write photos with one rectangle object each (plus a crowd RLE on the first)."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = 120, 160
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        top, left = int(rng.integers(0, 60)), int(rng.integers(0, 80))
        bottom, right = top + 40, left + 60
        pixels[top:bottom, left:right] = 230
        name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        polygon = [left, top, right, top, right, bottom, left, bottom]
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[float(v) for v in polygon]],
                "area": 2400.0,
                "bbox": [left, top, 60, 40],
            }
        )
    # A crowd region on image 1, in the bottom-right corner, stored as RLE.
    crowd = np.zeros((120, 160), dtype=np.uint8, order="F")
    crowd[100:, 140:] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode("ascii")
    annotations.append(
        {
            "id": 1000,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 1,
            "segmentation": rle,
            "area": 400.0,
            "bbox": [140, 100, 20, 20],
        }
    )
    # An image without any annotation: it has no foreground and is skipped.
    Image.fromarray(np.zeros((120, 160, 3), dtype=np.uint8)).save(image_dir / "empty.png")
    images.append({"id": 999, "file_name": "empty.png", "height": 120, "width": 160})
    instances = folder / "instances.json"
    instances.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "box", "supercategory": "box"}],
            }
        )
    )
    return image_dir, instances


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_coco(tmp_path_factory.mktemp("coco"))


class TestCropWindow:
    def test_window_inside_and_in_range(self):
        rng = np.random.default_rng(1)
        for _ in range(200):
            window = retention.sample_crop_window(480, 640, rng)
            assert window.top >= 0
            assert window.top + window.height <= 480
            assert window.left >= 0
            assert window.left + window.width <= 640
            area = window.height * window.width / (480 * 640)
            assert 0.89 <= area <= 1.0
            assert 0.74 <= window.width / window.height <= 1.34

    def test_same_seed_same_window(self):
        first = retention.sample_crop_window(300, 500, np.random.default_rng([3, 7]))
        second = retention.sample_crop_window(300, 500, np.random.default_rng([3, 7]))
        assert first == second

    def test_flip_drawn_both_ways(self):
        rng = np.random.default_rng(0)
        flips = [retention.sample_crop_window(100, 100, rng).flip for _ in range(100)]
        assert 20 < sum(flips) < 80

    def test_fallback_trims_to_aspect_limit(self):
        # A 10:1 panorama never fits an area >= 0.9 crop with ratio <= 4/3.
        window = retention.sample_crop_window(100, 1000, np.random.default_rng(0))
        assert window.height == 100
        assert window.width == round(100 * 4 / 3)
        assert window.left == (1000 - window.width) // 2

    def test_rejects_empty_image(self):
        with pytest.raises(ValueError, match="0x10"):
            retention.sample_crop_window(0, 10, np.random.default_rng(0))


class TestCropAndResize:
    def test_image_and_mask_stay_aligned(self):
        # The red channel is the mask, so after crop, resize and flip the
        # two outputs must still agree pixel for pixel.
        foreground = np.zeros((90, 120), dtype=bool)
        foreground[10:50, 70:110] = True
        image = np.zeros((90, 120, 3), dtype=np.uint8)
        image[..., 0] = foreground * 255
        for flip in (False, True):
            window = retention.CropWindow(5, 8, 80, 104, flip)
            pixels, mask = retention.crop_and_resize(image, foreground, window, 32)
            assert pixels.shape == (3, 32, 32)
            assert mask.shape == (32, 32)
            torch.testing.assert_close(pixels[0], mask, atol=1e-6, rtol=0)

    def test_flip_mirrors_columns(self):
        foreground = np.zeros((64, 64), dtype=bool)
        foreground[:, :16] = True
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        plain = retention.crop_and_resize(image, foreground, retention.CropWindow(0, 0, 64, 64, False), 64)[1]
        flipped = retention.crop_and_resize(image, foreground, retention.CropWindow(0, 0, 64, 64, True), 64)[1]
        assert plain[:, 0].min() == 1.0
        assert flipped[:, -1].min() == 1.0
        torch.testing.assert_close(flipped, plain.flip(-1))


class TestPatchForeground:
    def test_fractions(self):
        foreground = torch.zeros(1, 4, 4)
        foreground[0, 0, :3] = 1.0
        got = retention.patch_foreground_fraction(foreground, 2)
        torch.testing.assert_close(got, torch.tensor([[0.5, 0.25, 0.0, 0.0]]))

    def test_rejects_indivisible_size(self):
        with pytest.raises(ValueError, match="5x4"):
            retention.patch_foreground_fraction(torch.zeros(1, 5, 4), 2)


class TestRetentionPerImage:
    def test_hand_computed(self):
        fg = torch.tensor([[0.2, 0.0, 0.6, 0.2]])
        got = retention.retention_per_image(torch.tensor([[0, 2]]), fg)
        assert got.item() == pytest.approx(0.8)

    def test_all_kept_is_one(self):
        fg = torch.rand(3, 10)
        got = retention.retention_per_image(torch.arange(10).expand(3, 10), fg)
        torch.testing.assert_close(got, torch.ones(3, dtype=torch.float64))

    def test_no_foreground_is_nan(self):
        got = retention.retention_per_image(torch.tensor([[0]]), torch.zeros(1, 4))
        assert math.isnan(got.item())

    def test_rejects_batch_mismatch(self):
        with pytest.raises(ValueError, match="same B"):
            retention.retention_per_image(torch.zeros(2, 1, dtype=torch.long), torch.zeros(3, 4))


class TestOracle:
    def test_keeps_most_foreground(self):
        fg = torch.tensor([[0.1, 0.9, 0.0, 0.5, 0.5]])
        assert retention.oracle_keep_indices(fg, 3).tolist() == [[1, 3, 4]]

    def test_beats_any_other_choice(self):
        generator = torch.Generator().manual_seed(0)
        fg = torch.rand(8, 49, generator=generator) ** 3
        best = retention.retention_per_image(retention.oracle_keep_indices(fg, 20), fg)
        for _ in range(20):
            other = torch.rand(8, 49, generator=generator).argsort(1)[:, :20].sort(1).values
            assert (retention.retention_per_image(other, fg) <= best + 1e-12).all()

    def test_rejects_bad_count(self):
        with pytest.raises(ValueError, match="num_kept"):
            retention.oracle_keep_indices(torch.zeros(1, 4), 5)


class TestLoadCoco:
    def test_union_of_instances_and_crowd(self, tiny_coco):
        image_dir, instances = tiny_coco
        samples = retention.load_coco_foreground(image_dir, instances)
        assert len(samples) == 7
        first = samples[0]
        assert first.key == "000001"
        assert first.image.shape == (120, 160, 3)
        assert first.foreground[110, 150]  # crowd RLE
        # pycocotools rasterizes the 60x40 polygon with its border pixels.
        assert 2400 <= first.foreground[:100, :140].sum() <= 2600
        assert not samples[-1].foreground.any()

    def test_limit(self, tiny_coco):
        assert len(retention.load_coco_foreground(*tiny_coco, limit=2)) == 2

    def test_missing_folder(self, tmp_path, tiny_coco):
        with pytest.raises(ValueError, match="not found"):
            retention.load_coco_foreground(tmp_path / "nope", tiny_coco[1])


class TestMeasureRetention:
    def test_oracle_rows_and_skipped(self, tiny_coco):
        samples = retention.load_coco_foreground(*tiny_coco)
        views = [retention.prepare_views(samples, seed, image_size=64) for seed in (0, 1)]
        rows = retention.measure_retention(views, ["oracle"], [0.5])
        assert len(rows) == 1
        row = rows[0]
        assert row["images"] == 6
        assert row["skipped"] == 1
        assert row["seeds"] == 2
        assert row["kept_fraction"] == 0.5
        # One 60x40 box in a ~160x120 photo covers about 12% of it, so the
        # 8 kept patches of 16 hold nearly all of it.
        assert row["retention"] > 0.95

    def test_rejects_unknown_strategy(self, tiny_coco):
        views = [retention.prepare_views(retention.load_coco_foreground(*tiny_coco, limit=1), 0, 64)]
        with pytest.raises(ValueError, match="'foo'"):
            retention.measure_retention(views, ["foo"], [0.5])

    def test_rejects_patch_size_mismatch(self, tiny_coco):
        views = [retention.prepare_views(retention.load_coco_foreground(*tiny_coco, limit=1), 0, 64, 16)]
        with pytest.raises(ValueError, match="patch_size"):
            retention.measure_retention(views, ["oracle"], [0.5], base_config=MaskConfig(patch_size=8))

    @pytest.mark.parametrize("mask_ratio", [0.3, 0.5, 0.75])
    def test_random_keeps_one_minus_ratio(self, mask_ratio):
        # Many synthetic photos with one random box each: random masking is
        # blind to the box, so it keeps 1 - rho of it on average.
        rng = np.random.default_rng(5)
        samples = []
        for image_id in range(120):
            foreground = np.zeros((80, 80), dtype=bool)
            top, left = rng.integers(0, 50, size=2)
            foreground[top : top + 30, left : left + 30] = True
            image = rng.integers(0, 255, size=(80, 80, 3), dtype=np.uint8)
            samples.append(retention.ForegroundSample(f"s{image_id}", image_id, image, foreground))
        views = [retention.prepare_views(samples, seed, image_size=64) for seed in range(4)]
        row = retention.measure_retention(views, ["random"], [mask_ratio])[0]
        assert row["retention"] == pytest.approx(1 - mask_ratio, abs=0.02)

    def test_grid_reports_its_own_ratio(self, tiny_coco):
        views = [retention.prepare_views(retention.load_coco_foreground(*tiny_coco), 0, 64)]
        rows = retention.measure_retention(views, ["grid"], [0.3, 0.5])
        assert [row["mask_ratio"] for row in rows] == [0.75]
        assert rows[0]["kept_fraction"] == 0.25


def run_retention_cli(tiny_coco: tuple[Path, Path], *extra: str) -> int:
    image_dir, instances = tiny_coco
    return main(
        ["retention", "--coco-images", str(image_dir), "--coco-instances", str(instances), *extra]
    )


class TestCli:
    def test_json_rows(self, tiny_coco, capsys):
        status = run_retention_cli(
            tiny_coco,
            *("--strategies", "random,oracle", "--mask-ratios", "0.5"),
            *("--seeds", "2", "--image-size", "64", "--json"),
        )
        assert status == 0
        rows = json.loads(capsys.readouterr().out)
        assert [row["strategy"] for row in rows] == ["random", "oracle"]
        assert all(row["seeds"] == 2 for row in rows)
        assert all(row["images"] == 6 for row in rows)

    def test_table_marks_oracle(self, tiny_coco, capsys):
        status = run_retention_cli(
            tiny_coco, "--strategies", "oracle", "--seeds", "1", "--image-size", "64"
        )
        assert status == 0
        out = capsys.readouterr().out
        assert "upper bound" in out
        assert "1 image(s) without foreground skipped" in out

    @pytest.mark.parametrize(
        "extra, message",
        [
            (["--strategies", "foo"], "'foo'"),
            (["--mask-ratios", "1.5"], "1.5"),
            (["--set", "edge_scale"], "FIELD=VALUE"),
            (["--set", "seed=3"], "--seeds"),
            (["--set", "epsilon=-1"], "epsilon"),
        ],
    )
    def test_bad_arguments(self, tiny_coco, capsys, extra, message):
        assert run_retention_cli(tiny_coco, *extra) == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(not DATA.is_dir(), reason="coco-mini not available")
def test_coco_mini_random_and_oracle():
    samples = retention.load_coco_foreground(
        DATA / "images", DATA / "annotations" / "instances_train2017.json"
    )
    views = [retention.prepare_views(samples, seed) for seed in range(2)]
    rows = {row["strategy"]: row for row in retention.measure_retention(views, ["random", "oracle"], [0.5])}
    assert rows["random"]["images"] == 80
    assert rows["random"]["retention"] == pytest.approx(0.5, abs=0.03)
    assert rows["oracle"]["retention"] > 0.85
