"""Shared helpers for loader tests: generated shards and a fast tokenizer."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def photo_bytes(seed: int, size: tuple[int, int] = (96, 80), fmt: str = "JPEG") -> bytes:
    """Encode a generated photo-like image: a smooth background and a bright box."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    image = base + 30 * np.sin(x[..., None] / (5 + seed % 7)) + rng.normal(0, 4, (height, width, 3))
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top : top + height // 3, left : left + width // 3] = rng.uniform(150, 255, size=3)
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def fast_tokenizer(captions: list[str]) -> torch.Tensor:
    """Tokenize by characters into (B, 16) int64; enough to test the loader plumbing."""
    out = torch.zeros(len(captions), 16, dtype=torch.int64)
    for row, caption in enumerate(captions):
        codes = [ord(c) % 1000 for c in caption[:16]]
        out[row, : len(codes)] = torch.tensor(codes, dtype=torch.int64)
    return out


def write_generated_shards(folder: Path, num_shards: int, per_shard: int, prefix: str = "gen-") -> list[str]:
    """Write ``num_shards`` shards of generated samples with keys ``s{shard}_{i}``."""
    from pgs_dali.shards import ShardWriter

    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(folder, samples_per_shard=per_shard, prefix=prefix) as writer:
        for number in range(num_shards * per_shard):
            writer.write(
                f"s{number:05d}",
                {"jpg": photo_bytes(number), "txt": f"generated photo {number}".encode()},
            )
    return list(writer.paths)


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    """Write a tar with exactly ``members`` (name, bytes), for broken layouts."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def collect_keys(loader) -> list[str]:
    """Iterate one epoch and return the delivered keys in order."""
    keys: list[str] = []
    for batch in loader:
        keys.extend(key for key, pad in zip(batch["key"], batch["padded"].tolist()) if not pad)
    return keys
