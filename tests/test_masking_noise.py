"""The counter-based noise and the sample-key ids."""

from __future__ import annotations

import hashlib

import pytest
import torch

from pgs_dali.masking import noise
from pgs_dali.masking.noise import STREAM_PGS_CANDIDATES, STREAM_RANDOM, counter_uniform, sample_key_ids

MASK32 = 0xFFFFFFFF


def plain_fmix32(value: int) -> int:
    """MurmurHash3's 32-bit finalizer with Python's unbounded ints."""
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & MASK32
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & MASK32
    return value ^ (value >> 16)


def plain_absorb(state: int, word: int) -> int:
    return plain_fmix32(((state ^ word) + 0x9E3779B9) & MASK32)


def plain_uniform(key_id: int, index: int, seed: int, epoch: int, stream: int) -> float:
    """The documented hash chain, one element at a time."""
    key_id &= 2**64 - 1
    words = [stream, seed & MASK32, seed >> 32, epoch & MASK32, epoch >> 32, key_id & MASK32, key_id >> 32]
    lane_a, lane_b = 0x243F6A88, 0x85A308D3
    for word in words:
        lane_a = plain_absorb(lane_a, word)
        lane_b = plain_absorb(lane_b, word)
    hashed = plain_absorb(plain_absorb(lane_a, index), lane_b)
    return (hashed + 0.5) / 2**32


def test_fmix32_known_value():
    # MurmurHash3 fmix32(1), a published test value of the finalizer.
    assert noise._fmix32(1) == 0x514E28B7
    assert noise._fmix32(0) == 0


def test_tensor_hash_matches_plain_ints():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 2**32, (4096,), generator=generator, dtype=torch.int64)
    values[:3] = torch.tensor([0, MASK32, 2**31])

    hashed = noise._fmix32(values)

    expected = torch.tensor([plain_fmix32(int(value)) for value in values])
    assert torch.equal(hashed, expected)


@pytest.mark.parametrize(
    ("seed", "epoch", "key_id"),
    [(0, 0, 0), (3, 7, 2**63 - 1), (2**64 - 1, 2**40 + 5, -5), (123456789, 1, 2**32)],
)
def test_uniform_matches_plain_chain(seed, epoch, key_id):
    uniform = counter_uniform(torch.tensor([key_id]), 50, seed=seed, epoch=epoch, stream=STREAM_RANDOM)

    expected = [plain_uniform(key_id, index, seed, epoch, STREAM_RANDOM) for index in range(50)]
    assert uniform[0].tolist() == expected


def test_uniform_pinned_values():
    # Masks must stay reproducible across releases: these bits must not change.
    uniform = counter_uniform(torch.tensor([0, 42]), 3, seed=0, epoch=0, stream=STREAM_PGS_CANDIDATES)

    hashed = (uniform * 2**32 - 0.5).to(torch.int64).tolist()
    assert hashed == [[1476594254, 2867039278, 2788514307], [369061863, 2771303161, 1600192825]]


def test_uniform_range_and_spread():
    uniform = counter_uniform(torch.arange(64), 4096, seed=1, epoch=2, stream=STREAM_RANDOM)

    assert uniform.dtype == torch.float64
    assert uniform.shape == (64, 4096)
    assert float(uniform.min()) > 0.0
    assert float(uniform.max()) < 1.0
    # 262144 uniforms: the mean has a standard deviation of about 0.00056.
    assert abs(float(uniform.mean()) - 0.5) < 0.003
    histogram = torch.histc(uniform.float(), bins=16, min=0.0, max=1.0) / uniform.numel()
    assert float((histogram - 1 / 16).abs().max()) < 0.003


def test_uniform_rows_independent_of_batch():
    ids = torch.tensor([5, 9, 11])

    together = counter_uniform(ids, 20, seed=0, epoch=0, stream=STREAM_RANDOM)

    for row, key_id in enumerate(ids):
        alone = counter_uniform(key_id.reshape(1), 20, seed=0, epoch=0, stream=STREAM_RANDOM)
        assert torch.equal(together[row], alone[0])


def test_streams_seeds_epochs_differ():
    ids = torch.arange(4)
    base = counter_uniform(ids, 100, seed=0, epoch=0, stream=STREAM_RANDOM)

    assert not torch.equal(base, counter_uniform(ids, 100, seed=0, epoch=0, stream=STREAM_PGS_CANDIDATES))
    assert not torch.equal(base, counter_uniform(ids, 100, seed=1, epoch=0, stream=STREAM_RANDOM))
    assert not torch.equal(base, counter_uniform(ids, 100, seed=0, epoch=1, stream=STREAM_RANDOM))
    # Seeds that differ only in the high word differ too.
    assert not torch.equal(base, counter_uniform(ids, 100, seed=2**32, epoch=0, stream=STREAM_RANDOM))


def test_uniform_zero_count():
    assert counter_uniform(torch.arange(3), 0, seed=0, epoch=0, stream=1).shape == (3, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"count": -1}, ValueError, "count must be an int >= 0, got -1"),
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
        ({"epoch": 2**64}, ValueError, "epoch must be in"),
        ({"epoch": 0.5}, TypeError, "epoch must be an int, got float"),
        ({"key_ids": torch.tensor([1.0])}, TypeError, "1-D int64 tensor"),
    ],
)
def test_uniform_rejects_bad_arguments(kwargs, error, message):
    arguments = {"key_ids": torch.tensor([1]), "count": 3, "seed": 0, "epoch": 0, "stream": 1}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        counter_uniform(**arguments)


def test_key_ids_are_blake2b():
    keys = ["shard-000000/000001", "x", "", "ключ/ü"]

    ids = sample_key_ids(keys)

    for key, key_id in zip(keys, ids.tolist()):
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        assert key_id == int.from_bytes(digest, "little") & (2**63 - 1)
    assert ids.dtype == torch.int64
    assert bool((ids >= 0).all())


def test_key_ids_pinned_value():
    # Ids feed the noise, so changing them changes every mask: keep them fixed.
    assert sample_key_ids(["a"]).tolist() == [3405396810240292928]


def test_key_ids_empty():
    ids = sample_key_ids([])

    assert ids.shape == (0,)
    assert ids.dtype == torch.int64
