"""End-to-end tests of the DALI loader on generated shards (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loader_helpers import (
    collect_keys,
    fast_tokenizer,
    photo_bytes,
    write_generated_shards,
    write_raw_tar,
)
from pgs_dali import LoaderConfig, MaskConfig, build_loader
from pgs_dali.loader import BadSampleError
from pgs_dali.masking import keep_indices

REPO = Path(__file__).resolve().parents[1]


def make_config(data, **overrides) -> LoaderConfig:
    settings = dict(
        data=data,
        batch_size=4,
        image_size=64,
        mask=MaskConfig(strategy="pgs", mask_ratio=0.5, candidate_ratio=0.125),
        device="cpu",
        num_threads=1,
        shuffle_buffer=8,
        tokenizer=fast_tokenizer,
    )
    settings.update(overrides)
    return LoaderConfig(**settings)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_generated_shards(tmp_path_factory.mktemp("shards"), num_shards=3, per_shard=7)


def all_keys(paths: list[str]) -> set[str]:
    return {f"{Path(p).name[:-4]}/s{n:05d}" for n, p in enumerate(sorted(p for p in paths for _ in range(7)))}


class TestContract:
    def test_batch_shapes_dtypes_and_sorted_indices(self, shards):
        loader = build_loader(make_config(shards))
        batch = next(iter(loader))

        assert batch["image"].shape == (4, 3, 64, 64)
        assert batch["image"].dtype == torch.float32
        assert batch["text"].shape == (4, 16)
        assert batch["text"].dtype == torch.int64
        assert batch["keep_indices"].dtype == torch.int64
        assert batch["keep_indices"].shape == (4, 8)
        assert torch.all(batch["keep_indices"][:, 1:] > batch["keep_indices"][:, :-1])
        assert int(batch["keep_indices"].min()) >= 0
        assert int(batch["keep_indices"].max()) < 16
        assert len(batch["key"]) == 4

    def test_keep_indices_match_mask_of_delivered_pixels(self, shards):
        config = make_config(shards)
        loader = build_loader(config)
        loader.set_epoch(3)
        batch = next(iter(loader))
        mean = torch.tensor(config.mean).view(1, 3, 1, 1)
        std = torch.tensor(config.std).view(1, 3, 1, 1)
        # The pipeline normalizes uint8 crops, so un-normalizing and rounding
        # gives back the exact pixels the mask op read.
        pixels = (batch["image"] * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)

        expected = keep_indices(pixels, config.mask, keys=batch["key"], epoch=3)

        assert torch.equal(batch["keep_indices"], expected)

    @pytest.mark.parametrize("strategy", ["cluster", "random", "none"])
    def test_other_strategies_match_mask_op(self, shards, strategy):
        config = make_config(shards, mask=MaskConfig(strategy=strategy, mask_ratio=0.25))
        batch = next(iter(build_loader(config)))
        mean = torch.tensor(config.mean).view(1, 3, 1, 1)
        std = torch.tensor(config.std).view(1, 3, 1, 1)
        pixels = (batch["image"] * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)

        expected = keep_indices(pixels, config.mask, keys=batch["key"])

        assert torch.equal(batch["keep_indices"], expected)

    def test_len_and_counts(self, shards):
        loader = build_loader(make_config(shards))

        assert loader.num_samples == 21
        assert len(loader) == 6
        assert loader.num_batches == 6

    def test_default_tokenizer_gives_clip_tokens(self, shards):
        loader = build_loader(make_config(shards, tokenizer=None))
        batch = next(iter(loader))

        assert batch["text"].shape == (4, 77)
        assert torch.all(batch["text"][:, 0] == 49406)

    def test_bfloat16_images(self, shards):
        batch = next(iter(build_loader(make_config(shards, image_dtype="bfloat16"))))

        assert batch["image"].dtype == torch.bfloat16


class TestEpochCoverage:
    @pytest.mark.parametrize("world_size", [1, 2, 3])
    @pytest.mark.parametrize("num_shards,per_shard", [(1, 10), (2, 7), (5, 3)])
    def test_every_sample_once_across_ranks(self, tmp_path, world_size, num_shards, per_shard):
        paths = write_generated_shards(tmp_path, num_shards, per_shard)
        expected = num_shards * per_shard
        delivered: list[str] = []
        for rank in range(world_size):
            loader = build_loader(make_config(paths, rank=rank, world_size=world_size))
            delivered.extend(collect_keys(loader))

        assert len(delivered) == expected
        assert len(set(delivered)) == expected

    def test_two_epochs_each_complete_and_reshuffled(self, shards):
        loader = build_loader(make_config(shards))
        first = collect_keys(loader)
        second = collect_keys(loader)

        assert sorted(first) == sorted(second)
        assert len(set(first)) == 21
        assert first != second
        assert loader.summary()["delivered"] == 21

    def test_ranks_keep_their_part_over_epochs(self, shards):
        for rank in range(2):
            loader = build_loader(make_config(shards, rank=rank, world_size=2, batch_size=3))
            epochs = [collect_keys(loader) for _ in range(3)]

            assert len(epochs[0]) == (10 if rank == 0 else 11)
            for keys in epochs[1:]:
                assert sorted(keys) == sorted(epochs[0])

    def test_stopping_after_len_batches_starts_next_epoch(self, shards):
        loader = build_loader(make_config(shards))
        first = [key for _, batch in zip(range(len(loader)), loader) for key in batch["key"]]
        second = [key for _, batch in zip(range(len(loader)), loader) for key in batch["key"]]

        assert len(first) == 21
        assert sorted(second) == sorted(first)

    def test_pad_fills_last_batch_and_equalizes_ranks(self, tmp_path):
        paths = write_generated_shards(tmp_path, 1, 11)
        counts = []
        delivered = []
        for rank in range(2):
            loader = build_loader(make_config(paths, rank=rank, world_size=2, last_batch="pad"))
            batches = list(loader)
            counts.append(len(batches))
            assert all(len(b["key"]) == 4 for b in batches)
            delivered.extend(collect_keys_from(batches))
            summary = loader.summary()
            assert summary["padded"] == 4 * len(batches) - summary["delivered"]

        assert counts == [2, 2]
        assert len(delivered) == 11
        assert len(set(delivered)) == 11

    def test_drop_leaves_out_short_batch_and_counts_it(self, tmp_path):
        paths = write_generated_shards(tmp_path, 1, 10)
        loader = build_loader(make_config(paths, last_batch="drop"))
        batches = list(loader)

        assert len(batches) == 2
        assert loader.summary()["dropped"] == 2
        assert len(list(loader)) == 2


def collect_keys_from(batches) -> list[str]:
    return [k for b in batches for k, p in zip(b["key"], b["padded"].tolist()) if not p]


class TestResume:
    def test_resume_in_new_process_continues_exactly(self, tmp_path, shards):
        config_args = {"data": shards, "seed": 5}
        uninterrupted = build_loader(make_config(**config_args))
        reference = [(b["key"], b["image"].clone(), b["keep_indices"].clone()) for b in uninterrupted]

        loader = build_loader(make_config(**config_args))
        iterator = iter(loader)
        for _ in range(2):
            next(iterator)
        state_path = tmp_path / "state.pt"
        torch.save(loader.state_dict(), state_path)

        out_path = tmp_path / "resumed.pt"
        script = f"""
import sys, torch
sys.path.insert(0, {str(REPO / 'tests')!r})
from test_loader import make_config
from pgs_dali import build_loader
loader = build_loader(make_config(data={shards!r}, seed=5))
loader.load_state_dict(torch.load({str(state_path)!r}, weights_only=False))
torch.save([(b["key"], b["image"], b["keep_indices"]) for b in loader], {str(out_path)!r})
"""
        subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
        resumed = torch.load(out_path, weights_only=False)

        assert [r[0] for r in resumed] == [r[0] for r in reference[2:]]
        for (_, image, keep), (_, ref_image, ref_keep) in zip(resumed, reference[2:]):
            assert torch.equal(image, ref_image)
            assert torch.equal(keep, ref_keep)

    def test_resume_skips_delivered_samples_with_skips_in_batch(self, tmp_path):
        good = [(f"g{i:03d}.jpg", photo_bytes(i)) for i in range(9)]
        members = []
        for i, (name, data) in enumerate(good):
            members += [(name, data), (name[:-4] + ".txt", f"caption {i}".encode())]
            if i in (1, 4):
                members += [(f"b{i:03d}.jpg", b"\xff\xd8\xff junk"), (f"b{i:03d}.txt", b"broken")]
        path = write_raw_tar(tmp_path / "mixed.tar", members)
        reference = collect_keys(build_loader(make_config([path], batch_size=3)))

        loader = build_loader(make_config([path], batch_size=3))
        iterator = iter(loader)
        first = next(iterator)["key"]
        state = loader.state_dict()
        resumed_loader = build_loader(make_config([path], batch_size=3))
        resumed_loader.load_state_dict(state)
        rest = collect_keys(resumed_loader)

        assert first + rest == reference
        assert len(reference) == 9
        assert resumed_loader.summary()["skipped"] == {"unknown image format": 2} or sum(
            resumed_loader.summary()["skipped"].values()
        ) == 2

    def test_state_from_other_data_is_rejected(self, shards, tmp_path):
        other = write_generated_shards(tmp_path, 1, 5, prefix="other-")
        state = build_loader(make_config(shards)).state_dict()

        with pytest.raises(ValueError, match="other data or settings"):
            build_loader(make_config(other)).load_state_dict(state)


class TestBadSamples:
    @pytest.fixture
    def mixed_shard(self, tmp_path) -> str:
        members = []
        for i in range(6):
            members += [(f"good{i}.jpg", photo_bytes(i)), (f"good{i}.txt", f"a photo {i}".encode())]
        truncated = photo_bytes(99, size=(200, 160))
        members += [
            ("trunc.jpg", truncated[: len(truncated) // 2]),
            ("trunc.txt", b"truncated image"),
            ("junk.jpg", b"not an image at all"),
            ("junk.txt", b"junk"),
            ("emptycap.jpg", photo_bytes(7)),
            ("emptycap.txt", b"   \n"),
            ("badutf.jpg", photo_bytes(8)),
            ("badutf.txt", b"\xff\xfe caption"),
            ("nocap.jpg", photo_bytes(9)),
            ("a.b.jpg", photo_bytes(10)),
            ("a.b.txt", b"key with dots"),
            ("UPPER.JPG", photo_bytes(11)),
            ("UPPER.TXT", b"upper-case extensions"),
            ("__MACOSX/._good0.jpg", b"\x00\x05\x16\x07"),
            (".DS_Store", b"\x00\x00\x00\x01Bud1"),
        ]
        return write_raw_tar(tmp_path / "mixed.tar", members)

    def test_skip_policy_delivers_good_and_counts_bad(self, mixed_shard):
        loader = build_loader(make_config([mixed_shard]))
        keys = collect_keys(loader)
        summary = loader.summary()

        assert sorted(keys) == sorted(
            [f"mixed/good{i}" for i in range(6)] + ["mixed/a.b", "mixed/UPPER"]
        )
        assert summary["skipped"]["truncated"] == 1
        assert summary["skipped"]["unknown image format"] == 1
        assert summary["skipped"]["empty caption"] == 1
        assert summary["skipped"]["caption not valid UTF-8"] == 1
        assert summary["excluded_by_index"]["missing caption"] == 1
        assert summary["excluded_by_index"]["stray file"] >= 2
        named = {(s["key"], s["reason"].split(" ")[0]) for s in summary["skipped_samples"]}
        assert ("trunc", "truncated") in named

    def test_unusual_valid_images_are_delivered(self, tmp_path):
        import io

        import numpy as np
        from PIL import Image

        def encode(image: Image.Image, fmt: str) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            return buffer.getvalue()

        rng = np.random.default_rng(0)
        rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
        members = {
            "tiny.png": encode(Image.new("RGB", (3, 2), (200, 30, 30)), "PNG"),
            "onepixel.jpg": encode(Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"),
            "wide.jpg": encode(rgb.resize((2000, 8)), "JPEG"),
            "tall.jpg": encode(rgb.resize((6, 1500)), "JPEG"),
            "gray.jpg": encode(rgb.convert("L"), "JPEG"),
            "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
            "palette.png": encode(rgb.convert("P"), "PNG"),
            "alpha.png": encode(rgb.convert("RGBA"), "PNG"),
            "gray16.png": encode(Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)), "PNG"),
            "lossy.webp": encode(rgb, "WEBP"),
        }
        tar_members = []
        for name, data in members.items():
            tar_members += [(name, data), (name.rsplit(".", 1)[0] + ".txt", f"an image {name}".encode())]
        tar_members += [("long.jpg", photo_bytes(3)), ("long.txt", ("word " * 50_000).encode())]
        path = write_raw_tar(tmp_path / "unusual.tar", tar_members)
        loader = build_loader(make_config([path], batch_size=3))
        keys = collect_keys(loader)

        expected = [f"unusual/{name.rsplit('.', 1)[0]}" for name in members] + ["unusual/long"]
        assert sorted(keys) == sorted(expected)
        assert loader.summary()["skipped_total"] == 0

    def test_truncated_last_tar_member(self, tmp_path):
        members = []
        for i in range(4):
            members += [(f"ok{i}.jpg", photo_bytes(i)), (f"ok{i}.txt", f"fine {i}".encode())]
        members += [("last.jpg", photo_bytes(50, size=(300, 200))), ("last.txt", b"cut off")]
        path = Path(write_raw_tar(tmp_path / "cut.tar", members))
        data = path.read_bytes()
        # Cut inside the data of the last image member.
        cut_at = data.index(b"last.jpg") + 512 + 300
        path.write_bytes(data[:cut_at])
        loader = build_loader(make_config([str(path)]))
        keys = collect_keys(loader)

        assert sorted(keys) == [f"cut/ok{i}" for i in range(4)]
        assert sum(loader.summary()["excluded_by_index"].values()) >= 1

    def test_raise_policy_names_shard_key_and_reason(self, tmp_path):
        members = [("ok.jpg", photo_bytes(1)), ("ok.txt", b"fine"), ("zz.jpg", b"garbage"), ("zz.txt", b"x")]
        path = write_raw_tar(tmp_path / "bad.tar", members)
        loader = build_loader(make_config([path], on_error="raise", shuffle_buffer=0))

        with pytest.raises(BadSampleError, match=r"bad\.tar.*'zz'.*unknown image format"):
            list(loader)

    def test_decoder_failure_without_check_is_skipped(self, tmp_path):
        truncated = photo_bytes(5, size=(320, 240))
        members = [("t.jpg", truncated[: len(truncated) * 2 // 3]), ("t.txt", b"cut")]
        for i in range(5):
            members += [(f"ok{i}.jpg", photo_bytes(i)), (f"ok{i}.txt", b"fine")]
        path = write_raw_tar(tmp_path / "decode.tar", members)
        loader = build_loader(make_config([path], check_images=False))
        keys = collect_keys(loader)

        assert sorted(keys) == [f"decode/ok{i}" for i in range(5)]
        assert loader.summary()["skipped"] == {"decode failed": 1}

    def test_decoder_failure_with_raise_policy(self, tmp_path):
        truncated = photo_bytes(5, size=(320, 240))
        members = [("t.jpg", truncated[: len(truncated) * 2 // 3]), ("t.txt", b"cut")]
        path = write_raw_tar(tmp_path / "decode.tar", members)
        loader = build_loader(make_config([path], check_images=False, on_error="raise"))

        with pytest.raises(BadSampleError, match=r"decode\.tar.*'t'.*decode failed"):
            list(loader)

    def test_missing_listed_shard_is_skipped_or_raises(self, shards, tmp_path):
        missing = str(tmp_path / "nope.tar")
        loader = build_loader(make_config(shards + [missing]))

        assert loader.summary()["excluded_by_index"]["shard not found"] == 1
        assert len(collect_keys(loader)) == 21
        with pytest.raises(FileNotFoundError, match="nope.tar"):
            build_loader(make_config(shards + [missing], on_error="raise"))

    def test_missing_shard_in_joined_paths_is_skipped(self, shards, tmp_path):
        joined = "::".join(shards + [str(tmp_path / "gone.tar")])
        loader = build_loader(make_config(joined))

        assert loader.summary()["excluded_by_index"]["shard not found"] == 1
        assert len(collect_keys(loader)) == 21

    def test_pattern_matching_nothing(self, tmp_path):
        with pytest.raises(ValueError, match="no shard matches"):
            build_loader(make_config(str(tmp_path / "*.tar")))

    def test_empty_shard_is_left_out(self, shards, tmp_path):
        empty = write_raw_tar(tmp_path / "empty.tar", [])
        loader = build_loader(make_config(shards + [empty]))

        assert loader.summary()["excluded_by_index"]["empty shard"] == 1
        assert len(collect_keys(loader)) == 21


class TestConfigErrors:
    @pytest.mark.parametrize(
        "overrides,match",
        [
            ({"batch_size": 0}, "batch_size must be >= 1"),
            ({"image_size": 70}, "not divisible by patch_size"),
            ({"on_error": "ignore"}, "on_error must be one of"),
            ({"last_batch": "wrap"}, "last_batch must be one of"),
            ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
            ({"device": "tpu"}, "device must be"),
            ({"rank": 2, "world_size": 2}, r"rank must be in \[0, 2\)"),
            ({"image_dtype": "int8"}, "image_dtype must be one of"),
            ({"resize_filter": "lanczos"}, "resize_filter must be one of"),
        ],
    )
    def test_invalid_settings_raise(self, shards, overrides, match):
        with pytest.raises(ValueError, match=match):
            build_loader(make_config(shards, **overrides))

    def test_more_ranks_than_samples(self, tmp_path):
        paths = write_generated_shards(tmp_path, 1, 2)

        with pytest.raises(ValueError, match="cannot be split over 3 ranks"):
            build_loader(make_config(paths, rank=0, world_size=3))


def test_cli_error_is_one_line(tmp_path):
    command = [sys.executable, "-m", "pgs_dali", "run", "--data", str(tmp_path / "*.tar"), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("pgs-dali: error: no shard matches")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_run_json_on_generated_shards(shards):
    command = [
        sys.executable, "-m", "pgs_dali", "run", "--data", "::".join(shards),
        "--batch-size", "4", "--image-size", "64", "--device", "cpu", "--json", "--no-progress",
        "--strategy", "random", "--mask-ratio", "0.25",
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    report = json.loads(result.stdout)

    assert report["delivered"] == 21
    assert report["batches"] == 6
    assert report["keep"] == 12
    assert report["device"] == "cpu"
    assert report["images_per_s"] > 0
