"""Multi-process runs under torchrun (2 CPU ranks, gloo, loopback rendezvous)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loader_helpers import write_generated_shards

REPO = Path(__file__).resolve().parents[1]

# Each rank reads one epoch with rank and world size taken from
# torch.distributed, and writes the keys it got to keys-<rank>.json.
KEYS_WORKER = textwrap.dedent(
    """
    import json
    import sys

    import torch
    import torch.distributed as dist

    from pgs_dali import LoaderConfig, MaskConfig, build_loader

    def tokenizer(captions):
        return torch.zeros(len(captions), 4, dtype=torch.int64)

    dist.init_process_group("gloo")
    data, out_dir = sys.argv[1], sys.argv[2]
    loader = build_loader(LoaderConfig(
        data=data, batch_size=3, image_size=32, device="cpu", num_threads=1, shuffle_buffer=4,
        mask=MaskConfig(strategy="random", mask_ratio=0.5), tokenizer=tokenizer,
    ))
    keys = [key for batch in loader for key in batch["key"]]
    record = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "loader_rank": loader.rank,
        "loader_world_size": loader.world_size,
        "keys": keys,
    }
    with open(f"{out_dir}/keys-{dist.get_rank()}.json", "w") as handle:
        json.dump(record, handle)
    dist.barrier()
    dist.destroy_process_group()
    """
)


def torchrun_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_ranks_read_disjoint_parts_of_epoch(tmp_path):
    shards = write_generated_shards(tmp_path / "shards", num_shards=3, per_shard=7)
    worker = tmp_path / "keys_worker.py"
    worker.write_text(KEYS_WORKER)
    completed = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(worker), "::".join(shards), str(tmp_path),
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=torchrun_env(),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    records = [json.loads((tmp_path / f"keys-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(records):
        assert record["rank"] == rank
        assert record["loader_rank"] == rank
        assert record["loader_world_size"] == 2
        assert len(record["keys"]) == len(set(record["keys"]))
        assert record["keys"]

    first, second = (set(record["keys"]) for record in records)
    expected = {f"gen-{n // 7:06d}/s{n:05d}" for n in range(21)}
    assert not first & second
    assert first | second == expected


@pytest.mark.slow
def test_torchrun_example_trains_with_ddp(tmp_path):
    pytest.importorskip("open_clip")
    shards = write_generated_shards(tmp_path / "shards", num_shards=2, per_shard=8)
    env = torchrun_env()
    env["PYTHON"] = sys.executable
    completed = subprocess.run(
        [
            "bash", str(REPO / "examples" / "torchrun_train.sh"),
            "--data", "::".join(shards), "--steps", "3", "--batch-size", "4",
            "--image-size", "64", "--width", "64", "--layers", "2",
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2
    assert result["steps"] == 3
    assert result["tokens"] == 1 + 16 - 8
