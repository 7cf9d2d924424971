"""End-to-end runs of examples/train_open_clip.py (slow: real training steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loader_helpers import SHARED_DATA, write_generated_shards

pytest.importorskip("open_clip")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train_open_clip.py"
SMALL_MODEL = ["--image-size", "64", "--width", "64", "--layers", "2", "--workers", "1"]


def run_example(*options: str, timeout: float = 300) -> dict:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "coco-mini").is_dir(), reason="needs ../shared/data/coco-mini")
def test_loss_goes_down_on_coco_mini(tmp_path):
    result = run_example(
        "--steps", "20", "--lr", "1e-3", "--shards-dir", str(tmp_path / "shards"), *SMALL_MODEL
    )
    assert result["steps"] == 20
    assert result["strategy"] == "pgs"
    assert result["mask_ratio"] == 0.5
    # 64 px images, 16 px patches: 16 patches, 8 kept, plus the class token.
    assert result["tokens"] == 9
    assert result["mean_step_s"] > 0
    assert result["last_loss"] < result["first_loss"] - 0.2
    assert sorted(path.name for path in (tmp_path / "shards").glob("*.tar")) == [
        f"coco-00000{i}.tar" for i in range(4)
    ]


@pytest.mark.slow
def test_runs_on_given_shards(tmp_path):
    shards = write_generated_shards(tmp_path, num_shards=2, per_shard=8)
    result = run_example(
        "--data", "::".join(shards), "--steps", "3", "--batch-size", "4",
        "--strategy", "random", "--mask-ratio", "0.25", *SMALL_MODEL,
    )
    assert result["steps"] == 3
    assert result["strategy"] == "random"
    assert result["tokens"] == 1 + 16 - 4
