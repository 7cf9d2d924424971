"""Tests for gather_tokens and ImagesWithKeepIndices."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from pgs_dali.integrations.tokens import (
    ImagesWithKeepIndices,
    check_keep_indices,
    gather_tokens,
    get_keep_indices,
    with_keep_indices,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _loop_gather(tokens: torch.Tensor, keep: torch.Tensor, prefix: int) -> torch.Tensor:
    rows = []
    for b in range(tokens.shape[0]):
        kept = [tokens[b, prefix + int(j)] for j in keep[b]]
        rows.append(torch.stack([*tokens[b, :prefix], *kept]))
    return torch.stack(rows)


class TestGatherTokens:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("prefix", [0, 1, 5])
    def test_matches_loop(self, device, prefix):
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randn(3, prefix + 16, 4, generator=generator).to(device)
        keep = torch.stack([torch.randperm(16, generator=generator)[:6].sort().values for _ in range(3)])
        result = gather_tokens(tokens, keep, num_prefix_tokens=prefix)
        assert result.shape == (3, prefix + 6, 4)
        assert result.device.type == device
        assert torch.equal(result.cpu(), _loop_gather(tokens.cpu(), keep, prefix))

    def test_hand_computed(self):
        # token value = position, so the output lists the positions kept.
        tokens = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
        keep = torch.tensor([[1, 3]])
        result = gather_tokens(tokens, keep)
        assert result.flatten().tolist() == [0.0, 2.0, 4.0]

    def test_keep_all_is_identity(self):
        tokens = torch.randn(2, 1 + 9, 3)
        keep = torch.arange(9).expand(2, 9)
        assert torch.equal(gather_tokens(tokens, keep), tokens)

    def test_empty_keep_returns_prefix(self):
        tokens = torch.randn(2, 1 + 9, 3)
        keep = torch.empty(2, 0, dtype=torch.int64)
        assert torch.equal(gather_tokens(tokens, keep), tokens[:, :1])

    def test_gradient_reaches_kept_tokens_only(self):
        tokens = torch.randn(1, 1 + 4, 2, requires_grad=True)
        gather_tokens(tokens, torch.tensor([[0, 2]])).sum().backward()
        assert tokens.grad[0, :, 0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]

    def test_indices_follow_tokens_device(self):
        tokens = torch.randn(1, 5, 2, dtype=torch.float64)
        result = gather_tokens(tokens, torch.tensor([[0, 1]]))
        assert result.dtype == torch.float64

    def test_rejects_2d_tokens(self):
        with pytest.raises(ValueError, match=r"tokens must have shape \(B, P \+ N, D\), got \(2, 5\)"):
            gather_tokens(torch.randn(2, 5), torch.zeros(2, 1, dtype=torch.int64))

    def test_rejects_non_tensor_tokens(self):
        with pytest.raises(TypeError, match="tokens must be a torch.Tensor, got list"):
            gather_tokens([[1.0]], torch.zeros(1, 1, dtype=torch.int64))

    def test_rejects_1d_indices(self):
        with pytest.raises(ValueError, match=r"shape \(B, K\), got \(3,\)"):
            gather_tokens(torch.randn(1, 5, 2), torch.tensor([0, 1, 2]))

    def test_rejects_int32_indices(self):
        with pytest.raises(TypeError, match="int64, got torch.int32"):
            gather_tokens(torch.randn(1, 5, 2), torch.tensor([[0, 1]], dtype=torch.int32))

    def test_rejects_batch_mismatch(self):
        with pytest.raises(ValueError, match=r"3 rows but the batch has 2 images"):
            gather_tokens(torch.randn(2, 5, 2), torch.zeros(3, 1, dtype=torch.int64))

    def test_rejects_k_above_n(self):
        keep = torch.arange(5).unsqueeze(0)
        with pytest.raises(ValueError, match="K=5 patches but the image has only N=4"):
            gather_tokens(torch.randn(1, 1 + 4, 2), keep)

    @pytest.mark.parametrize("bad", [-1, 4, 100])
    def test_rejects_out_of_range(self, bad):
        keep = torch.tensor([[0, 1], [2, bad]]) if bad > 0 else torch.tensor([[0, 1], [bad, 2]])
        column = 1 if bad > 0 else 0
        with pytest.raises(ValueError, match=rf"keep_indices\[1, {column}\] = {bad} is outside \[0, 4\)"):
            gather_tokens(torch.randn(2, 1 + 4, 2), keep)

    def test_rejects_unsorted(self):
        with pytest.raises(ValueError, match=r"row 0 must be strictly ascending.*\[3, 1\] at columns 1 and 2"):
            gather_tokens(torch.randn(1, 1 + 4, 2), torch.tensor([[0, 3, 1]]))

    def test_rejects_duplicates(self):
        with pytest.raises(ValueError, match=r"row 1 must be strictly ascending.*\[2, 2\]"):
            gather_tokens(torch.randn(2, 1 + 4, 2), torch.tensor([[0, 1], [2, 2]]))

    def test_rejects_bad_prefix(self):
        with pytest.raises(ValueError, match=r"num_prefix_tokens must be in \[0, 5\].*got 6"):
            gather_tokens(torch.randn(1, 5, 2), torch.zeros(1, 0, dtype=torch.int64), num_prefix_tokens=6)
        with pytest.raises(TypeError, match="num_prefix_tokens must be an int, got bool"):
            gather_tokens(torch.randn(1, 5, 2), torch.zeros(1, 0, dtype=torch.int64), num_prefix_tokens=True)

    def test_check_keep_indices_accepts_valid(self):
        check_keep_indices(torch.tensor([[0, 2, 3]]), num_patches=4, batch_size=1)


def _carrier(batch: int = 4) -> ImagesWithKeepIndices:
    images = torch.arange(batch * 3 * 2 * 2, dtype=torch.float32).view(batch, 3, 2, 2)
    keep = torch.arange(batch * 2).view(batch, 2)
    return with_keep_indices(images, keep)


class TestImagesWithKeepIndices:
    def test_shares_memory_and_values(self):
        images = torch.rand(2, 3, 4, 4)
        carried = with_keep_indices(images, torch.zeros(2, 1, dtype=torch.int64))
        assert carried.data_ptr() == images.data_ptr()
        assert torch.equal(carried, images)
        assert get_keep_indices(carried).shape == (2, 1)
        assert get_keep_indices(images) is None

    @pytest.mark.parametrize(
        "convert",
        [
            lambda t: t.to(dtype=torch.float16),
            lambda t: t.to("cpu", torch.bfloat16, non_blocking=True),
            lambda t: t.float(),
            lambda t: t.half(),
            lambda t: t.double(),
            lambda t: t.contiguous(),
            lambda t: t.clone(),
            lambda t: t.detach(),
            lambda t: t.cpu(),
            lambda t: torch.clone(t),
        ],
    )
    def test_conversions_keep_indices(self, convert):
        carried = _carrier()
        converted = convert(carried)
        assert isinstance(converted, ImagesWithKeepIndices)
        assert converted.keep_indices.dtype == torch.int64
        assert torch.equal(converted.keep_indices, carried.keep_indices)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_to_cuda_moves_indices(self):
        moved = _carrier().to("cuda")
        assert moved.keep_indices.device.type == "cuda"

    @pytest.mark.parametrize(
        ("key", "rows"),
        [
            (slice(1, 3), [1, 2]),
            (slice(None, None, 2), [0, 2]),
            ([3, 0], [3, 0]),
            (range(2), [0, 1]),
            (torch.tensor([2, 1]), [2, 1]),
            (torch.tensor([True, False, False, True]), [0, 3]),
            ((slice(0, 2), slice(None), 0), [0, 1]),
        ],
    )
    def test_batch_indexing_selects_rows(self, key, rows):
        carried = _carrier()
        selected = carried[key]
        assert isinstance(selected, ImagesWithKeepIndices)
        assert torch.equal(selected.keep_indices, carried.keep_indices[rows])
        assert torch.equal(selected.as_subclass(torch.Tensor), carried.as_subclass(torch.Tensor)[key])

    @pytest.mark.parametrize("key", [0, (Ellipsis, 0), (None, slice(None)), (torch.tensor([0]), 0, torch.tensor([1]))])
    def test_other_indexing_returns_plain_tensor(self, key):
        assert type(_carrier()[key]) is torch.Tensor

    def test_split_and_chunk_along_batch(self):
        carried = _carrier(5)
        for pieces in (carried.split(2), torch.split(carried, [1, 4]), carried.chunk(3), torch.chunk(carried, 2, dim=0)):
            assert all(isinstance(piece, ImagesWithKeepIndices) for piece in pieces)
            assert torch.equal(torch.cat([piece.keep_indices for piece in pieces]), carried.keep_indices)

    def test_split_along_channels_is_plain(self):
        pieces = _carrier().split(1, dim=1)
        assert all(type(piece) is torch.Tensor for piece in pieces)

    def test_cat_along_batch(self):
        carried = _carrier()
        joined = torch.cat([carried[2:], carried[:2]])
        assert isinstance(joined, ImagesWithKeepIndices)
        assert joined.keep_indices[:, 0].tolist() == [4, 6, 0, 2]

    def test_cat_with_plain_tensor_is_plain(self):
        carried = _carrier()
        assert type(torch.cat([carried, torch.zeros(1, 3, 2, 2)])) is torch.Tensor

    def test_compute_ops_return_plain_tensor(self):
        carried = _carrier()
        assert type(carried * 2) is torch.Tensor
        assert type(torch.nn.functional.conv2d(carried, torch.ones(1, 3, 2, 2))) is torch.Tensor

    def test_in_place_op_keeps_indices(self):
        carried = _carrier()
        assert carried.mul_(2) is carried
        assert carried.keep_indices.shape == (4, 2)

    def test_deepcopy_and_pickle(self):
        carried = _carrier()
        for copied in (copy.deepcopy(carried), pickle.loads(pickle.dumps(carried))):
            assert isinstance(copied, ImagesWithKeepIndices)
            assert torch.equal(copied, carried)
            assert torch.equal(copied.keep_indices, carried.keep_indices)

    def test_repr_names_indices(self):
        assert "keep_indices shape (4, 2)" in repr(_carrier())

    def test_rejects_mismatched_batch(self):
        with pytest.raises(ValueError, match=r"got keep_indices \(3, 2\) for images \(4, 3, 2, 2\)"):
            with_keep_indices(torch.zeros(4, 3, 2, 2), torch.zeros(3, 2, dtype=torch.int64))

    def test_rejects_float_indices(self):
        with pytest.raises(TypeError, match="keep_indices must be int64, got torch.float32"):
            with_keep_indices(torch.zeros(4, 3, 2, 2), torch.zeros(4, 2))
