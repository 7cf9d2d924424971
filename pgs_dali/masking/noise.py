"""Counter-based noise: uniforms that depend only on (seed, epoch, sample key, index).

Every random choice of the mask strategies reads its noise from
:func:`counter_uniform`. The value for element ``j`` of a sample is a hash of
``(stream, seed, epoch, key id, j)``. The noise of a sample therefore does not
depend on the batch size, its position in the batch, the number of ranks or
the device, and the torch global random state is never touched.

The hash works on 32-bit lanes stored in int64 tensors. Each multiplication is
split into 16-bit halves so that every intermediate product stays below 2**48:
signed int64 overflow never happens, and the result is bit-exact on every
device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

# Streams keep the noise of different uses independent. A new use gets a new
# number; changing an existing number changes every mask made with it.
STREAM_PGS_CANDIDATES = 1
STREAM_RANDOM = 2
STREAM_GAUSSIAN = 3
STREAM_CLUSTER_ANCHORS = 4
STREAM_CLUSTER_FILL = 5
STREAM_GRID = 6
STREAM_BLOCK_SHAPE = 7

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9
_LANE_A_INIT = 0x243F6A88
_LANE_B_INIT = 0x85A308D3
_MAX_WORD = 2**64


def _mul32(x, factor: int):
    """Return ``(x * factor) mod 2**32`` for ``0 <= x, factor < 2**32``.

    Works on Python ints and int64 tensors alike. ``x`` is split into 16-bit
    halves so no partial product reaches 2**63.
    """
    low = x & 0xFFFF
    high = x >> 16
    return (low * factor + (((high * factor) & 0xFFFF) << 16)) & _MASK32


def _fmix32(x):
    """Apply the 32-bit finalizer of MurmurHash3 (a bijection on [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _absorb(state, word):
    """Mix one 32-bit ``word`` into a 32-bit hash ``state``."""
    return _fmix32(((state ^ word) + _GOLDEN32) & _MASK32)


def _split_word(name: str, value: int) -> tuple[int, int]:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < _MAX_WORD:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value & _MASK32, value >> 32


def sample_key_ids(keys: Sequence[str]) -> torch.Tensor:
    """Map sample-key strings to stable 63-bit ids.

    The id is the first 8 bytes of the BLAKE2b digest of the UTF-8 key, read
    little-endian, with the top bit cleared. It is the same in every process
    and on every machine, unlike Python's ``hash()``.

    Args:
        keys: B sample keys, e.g. ``"shard-000000/000123"``.

    Returns:
        (B,) int64 tensor on the CPU, values in [0, 2**63).

    Raises:
        TypeError: ``keys`` is a single string or contains a non-string.

    Example:
        >>> ids = sample_key_ids(["a/0001", "a/0002", "a/0001"])
        >>> ids.shape, ids.dtype
        (torch.Size([3]), torch.int64)
        >>> bool(ids[0] == ids[2]), bool(ids[0] == ids[1])
        (True, False)
    """
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys must be a sequence of strings, got a single string")
    ids = []
    for position, key in enumerate(keys):
        if not isinstance(key, str):
            raise TypeError(f"keys[{position}] must be a str, got {type(key).__name__}")
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        ids.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.tensor(ids, dtype=torch.int64)


def counter_uniform(
    key_ids: torch.Tensor, count: int, *, seed: int, epoch: int, stream: int
) -> torch.Tensor:
    """Draw counter-based uniforms for ``count`` elements of each sample.

    Element ``j`` of row ``b`` is a hash of ``(stream, seed, epoch,
    key_ids[b], j)``, converted exactly to float64 as ``(h + 0.5) / 2**32``
    for a 32-bit hash ``h``. The values are never 0 or 1, and the same inputs
    give the same bits on every device and batch layout.

    Args:
        key_ids: (B,) int64 sample ids (any int64 value, e.g. from
            :func:`sample_key_ids`), on the device the result should be on.
        count: number of elements per sample (N patches, windows, ...), >= 0.
        seed: base seed in [0, 2**64).
        epoch: epoch in [0, 2**64).
        stream: the use of the noise, one of the ``STREAM_*`` constants, so
            different uses of one sample draw independent values.

    Returns:
        (B, count) float64 tensor on ``key_ids.device``, values in (0, 1).

    Example:
        >>> ids = torch.tensor([7, 8])
        >>> u = counter_uniform(ids, 5, seed=0, epoch=0, stream=STREAM_RANDOM)
        >>> u.shape, u.dtype
        (torch.Size([2, 5]), torch.float64)
        >>> bool(((u > 0) & (u < 1)).all())
        True
        >>> torch.equal(u[1], counter_uniform(ids[1:], 5, seed=0, epoch=0, stream=STREAM_RANDOM)[0])
        True
    """
    if not isinstance(key_ids, torch.Tensor) or key_ids.dtype != torch.int64 or key_ids.ndim != 1:
        raise TypeError("key_ids must be a 1-D int64 tensor")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    seed_low, seed_high = _split_word("seed", seed)
    epoch_low, epoch_high = _split_word("epoch", epoch)

    # The words shared by the whole batch are hashed with Python ints, the
    # per-sample words as (B,) tensors. Two independent 32-bit lanes make the
    # per-sample state 64 bits wide, so two keys share a noise stream only if
    # both lanes collide.
    lane_a, lane_b = _LANE_A_INIT, _LANE_B_INIT
    for word in (stream & _MASK32, seed_low, seed_high, epoch_low, epoch_high):
        lane_a = _absorb(lane_a, word)
        lane_b = _absorb(lane_b, word)
    key_low = key_ids & _MASK32
    key_high = (key_ids >> 32) & _MASK32
    lane_a = _absorb(_absorb(lane_a, key_low), key_high)
    lane_b = _absorb(_absorb(lane_b, key_low), key_high)

    index = torch.arange(count, dtype=torch.int64, device=key_ids.device)
    hashed = _absorb(_absorb(lane_a[:, None], index[None, :]), lane_b[:, None])
    # NOTE: float64 rules out devices without it, such as Apple MPS.
    return (hashed.to(torch.float64) + 0.5) * 2.0**-32
