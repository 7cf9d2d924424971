"""Loader runs on the real photos and broken files in ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loader_helpers import SHARED_DATA, collect_keys, fast_tokenizer, write_raw_tar
from pgs_dali import LoaderConfig, MaskConfig, build_loader
from pgs_dali.loader import BadSampleError

ODD = SHARED_DATA / "odd-images"
COCO = SHARED_DATA / "coco-mini" / "images"
REPO = Path(__file__).resolve().parents[1]

# The six files DALI's CPU decoder rejects, and the giant image that the
# default max_pixels rejects by its header.
BROKEN = {
    "broken.png", "corrupt-header.jpg", "junk_jpeg_header.jpg",
    "truncated.jpg", "truncated_jpeg.jpg", "truncated_image.png",
}
TOO_LARGE = {"giant-image.jpg"}

pytestmark = pytest.mark.skipif(not ODD.is_dir() or not COCO.is_dir(), reason="../shared/data is absent")


@pytest.fixture(scope="module")
def odd_shard(tmp_path_factory) -> str:
    """One shard: 12 coco-mini photos interleaved with every odd image."""
    photos = sorted(COCO.glob("*.jpg"))[:12]
    odd = sorted(ODD.iterdir())
    members = []
    for index in range(max(len(photos), len(odd))):
        if index < len(photos):
            members += [(f"photo{index:02d}.jpg", photos[index].read_bytes()),
                        (f"photo{index:02d}.txt", f"coco photo {index}".encode())]
        if index < len(odd):
            path = odd[index]
            stem, extension = path.stem, path.suffix.lstrip(".")
            members += [(f"{stem}.{extension}", path.read_bytes()), (f"{stem}.txt", f"odd {stem}".encode())]
    return write_raw_tar(tmp_path_factory.mktemp("odd") / "odd.tar", members)


def config(data, **overrides) -> LoaderConfig:
    settings = dict(
        data=data, batch_size=5, image_size=64, device="cpu", num_threads=2,
        mask=MaskConfig(strategy="pgs", mask_ratio=0.5, candidate_ratio=0.125),
        tokenizer=fast_tokenizer, shuffle_buffer=0,
    )
    settings.update(overrides)
    return LoaderConfig(**settings)


def test_skip_policy_runs_to_the_end(odd_shard):
    loader = build_loader(config([odd_shard]))
    keys = collect_keys(loader)
    summary = loader.summary()

    valid_odd = {p.stem for p in ODD.iterdir() if p.name not in BROKEN | TOO_LARGE}
    expected = {f"odd/photo{i:02d}" for i in range(12)} | {f"odd/{stem}" for stem in valid_odd}
    assert sorted(keys) == sorted(expected)
    skipped = {item["key"]: item["reason"] for item in summary["skipped_samples"]}
    assert set(skipped) == {Path(name).stem for name in BROKEN | TOO_LARGE}
    assert skipped["giant-image"].startswith("too many pixels")
    assert summary["skipped_total"] == len(BROKEN) + len(TOO_LARGE)


def test_raise_policy_stops_on_first_bad_file(odd_shard):
    loader = build_loader(config([odd_shard], on_error="raise"))

    with pytest.raises(BadSampleError) as error:
        collect_keys(loader)
    assert "odd.tar" in str(error.value)
    assert error.value.key in {Path(name).stem for name in BROKEN | TOO_LARGE}


@pytest.mark.slow
def test_cli_summary_names_every_bad_file(odd_shard):
    command = [sys.executable, "-m", "pgs_dali", "run", "--data", odd_shard, "--batch-size", "5",
               "--image-size", "64", "--device", "cpu", "--no-progress"]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)

    for name in BROKEN | TOO_LARGE:
        assert f"key {Path(name).stem!r}" in result.stdout
    json_result = subprocess.run(command + ["--json"], check=True, capture_output=True, text=True, cwd=REPO)
    report = json.loads(json_result.stdout)
    assert report["skipped_total"] == len(BROKEN) + len(TOO_LARGE)
