"""Kept-patch token gathering and an image batch that carries its keep indices.

:func:`gather_tokens` selects the kept patch tokens inside a vision
transformer. :class:`ImagesWithKeepIndices` lets a batch of images carry its
(B, K) keep indices through a training loop that only passes images and texts
to the model, so a patch-dropout module can find them (see
``pgs_dali.integrations.open_clip``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "ImagesWithKeepIndices",
    "check_keep_indices",
    "gather_tokens",
    "get_keep_indices",
    "with_keep_indices",
]


def check_keep_indices(keep_indices: torch.Tensor, num_patches: int, batch_size: int) -> None:
    """Validate a (B, K) keep-index tensor against a grid of ``num_patches`` patches.

    Args:
        keep_indices: (B, K) int64 patch indices, strictly ascending in each row,
            each in [0, N).
        num_patches: N, the number of patch tokens of the image.
        batch_size: B, the number of images the indices must cover.

    Raises:
        TypeError: ``keep_indices`` is not a tensor or not int64.
        ValueError: wrong rank or batch size, K > N, an index outside [0, N),
            or a row that is not strictly ascending (which includes duplicates).
    """
    if not isinstance(keep_indices, torch.Tensor):
        raise TypeError(f"keep_indices must be a torch.Tensor, got {type(keep_indices).__name__}")
    if keep_indices.dtype != torch.int64:
        raise TypeError(f"keep_indices must be int64, got {keep_indices.dtype}")
    if keep_indices.dim() != 2:
        raise ValueError(
            f"keep_indices must have shape (B, K), got {tuple(keep_indices.shape)}"
        )
    rows, kept = keep_indices.shape
    if rows != batch_size:
        raise ValueError(
            f"keep_indices has {rows} rows but the batch has {batch_size} images "
            f"(keep_indices shape {tuple(keep_indices.shape)})"
        )
    if kept > num_patches:
        raise ValueError(
            f"keep_indices keeps K={kept} patches but the image has only N={num_patches}; "
            "was the mask computed for another image size or patch size?"
        )
    if keep_indices.numel() == 0:
        return

    # One host read-back for both value checks: on a GPU this is a single sync.
    out_of_range = (keep_indices < 0) | (keep_indices >= num_patches)
    not_ascending = keep_indices[:, 1:] <= keep_indices[:, :-1]
    flags = torch.stack([out_of_range.any(), not_ascending.any()]).tolist()
    if flags[0]:
        row, col = (int(i) for i in out_of_range.nonzero()[0])
        raise ValueError(
            f"keep_indices[{row}, {col}] = {int(keep_indices[row, col])} is outside "
            f"[0, {num_patches}) for N={num_patches} patches"
        )
    if flags[1]:
        row, col = (int(i) for i in not_ascending.nonzero()[0])
        pair = keep_indices[row, col : col + 2].tolist()
        raise ValueError(
            f"keep_indices row {row} must be strictly ascending without duplicates, "
            f"got {pair} at columns {col} and {col + 1}"
        )


def gather_tokens(
    tokens: torch.Tensor, keep_indices: torch.Tensor, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Keep the prefix tokens and the patch tokens listed in ``keep_indices``.

    The prefix tokens (class token, register tokens) come first in ``tokens``
    and are always kept. Patch j of the (H/p) x (W/p) grid, counted row-major,
    is token ``num_prefix_tokens + j``. The gather is differentiable with
    respect to ``tokens``.

    Args:
        tokens: (B, P + N, D) token embeddings, P = ``num_prefix_tokens``
            prefix tokens followed by N patch tokens, any float dtype and device.
        keep_indices: (B, K) int64 patch indices in [0, N), strictly ascending
            in each row, K <= N; moved to ``tokens.device`` if needed.
        num_prefix_tokens: P, the number of leading tokens that are not patches.

    Returns:
        (B, P + K, D) tensor on ``tokens.device``: the P prefix tokens, then the
        kept patch tokens in ascending index order.

    Raises:
        TypeError: ``tokens`` or ``keep_indices`` is not a tensor, or
            ``keep_indices`` is not int64.
        ValueError: a shape does not match, or an index is out of range,
            duplicated or out of order.

    Example:
        >>> tokens = torch.randn(2, 1 + 16, 8)
        >>> keep = torch.tensor([[0, 3, 5, 15], [1, 2, 8, 9]])
        >>> gather_tokens(tokens, keep).shape
        torch.Size([2, 5, 8])
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must have shape (B, P + N, D), got {tuple(tokens.shape)}")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int):
        raise TypeError(
            f"num_prefix_tokens must be an int, got {type(num_prefix_tokens).__name__}"
        )
    if not 0 <= num_prefix_tokens <= tokens.shape[1]:
        raise ValueError(
            f"num_prefix_tokens must be in [0, {tokens.shape[1]}] for tokens of shape "
            f"{tuple(tokens.shape)}, got {num_prefix_tokens}"
        )
    num_patches = tokens.shape[1] - num_prefix_tokens
    if isinstance(keep_indices, torch.Tensor) and keep_indices.device != tokens.device:
        keep_indices = keep_indices.to(tokens.device, non_blocking=True)
    check_keep_indices(keep_indices, num_patches, batch_size=tokens.shape[0])

    prefix = tokens[:, :num_prefix_tokens]
    patches = tokens[:, num_prefix_tokens:]
    index = keep_indices.unsqueeze(-1).expand(-1, -1, tokens.shape[2])
    kept = torch.gather(patches, dim=1, index=index)
    return torch.cat([prefix, kept], dim=1)


class ImagesWithKeepIndices(torch.Tensor):
    """A (B, 3, H, W) image tensor that carries its (B, K) ``keep_indices``.

    It behaves as the plain image tensor in every operation. A few operations
    keep the indices attached, because trainers apply them to whole batches
    before the batches reach the model:

    - ``.to()``, ``.cuda()``, ``.cpu()``, ``.pin_memory()``: the indices move
      to the device of the result and stay int64 whatever image dtype is
      requested;
    - ``.float()``, ``.half()``, ``.bfloat16()``, ``.double()``, ``.type()``,
      ``.contiguous()``, ``.clone()``, ``.detach()``;
    - batch slicing ``images[a:b]``, ``images[index_tensor]``,
      ``images[bool_mask]``, with the same selection applied to the rows
      of the indices;
    - ``split`` and ``chunk`` along dim 0, and ``torch.cat`` along dim 0
      of several such tensors.

    Every other operation returns a plain ``torch.Tensor``. The model's first
    layer (the patch-embedding convolution) therefore drops the subclass, and
    the transformer itself runs on plain tensors.

    Build one with :func:`with_keep_indices`.
    """

    keep_indices: torch.Tensor

    @staticmethod
    def __new__(cls, images: torch.Tensor, keep_indices: torch.Tensor) -> ImagesWithKeepIndices:
        result = images.as_subclass(cls)
        result.keep_indices = keep_indices
        return result

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        with torch._C.DisableTorchFunctionSubclass():
            images = repr(self.as_subclass(torch.Tensor))
        return f"ImagesWithKeepIndices({images}, keep_indices shape {tuple(self.keep_indices.shape)})"

    def __deepcopy__(self, memo: dict) -> ImagesWithKeepIndices:
        images = copy.deepcopy(self.as_subclass(torch.Tensor), memo)
        return ImagesWithKeepIndices(images, copy.deepcopy(self.keep_indices, memo))

    def __reduce_ex__(self, protocol: int) -> tuple:
        return (ImagesWithKeepIndices, (self.as_subclass(torch.Tensor), self.keep_indices))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # NOTE: torch.Tensor.__torch_function__ runs ops this way too; the
        # result is a plain tensor unless the op returned one of its inputs.
        with torch._C.DisableTorchFunctionSubclass():
            output = func(*args, **kwargs)
        if isinstance(output, ImagesWithKeepIndices):
            return output

        if func in _BATCH_PRESERVING_OPS:
            return _attach(output, args[0].keep_indices)
        if func is torch.Tensor.__getitem__:
            return _select_rows(args[0], args[1], output)
        if func in _SPLIT_OPS:
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            return _split_rows(args[0], dim, output)
        if func in _CONCAT_OPS:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            return _concat_rows(args[0], dim, output)
        return output


def with_keep_indices(images: torch.Tensor, keep_indices: torch.Tensor) -> ImagesWithKeepIndices:
    """Attach a batch's keep indices to its images.

    The result shares memory with ``images``; the indices are moved to
    ``images.device``. Only the batch sizes are checked here. The patch-dropout
    module checks K and the index values against the model's patch grid.

    Args:
        images: (B, 3, H, W) float image batch (any tensor with batch dim 0).
        keep_indices: (B, K) int64 patch indices, ascending in each row.

    Returns:
        ``images`` as an :class:`ImagesWithKeepIndices` with
        ``.keep_indices`` set.

    Raises:
        TypeError: an argument is not a tensor, or ``keep_indices`` is not int64.
        ValueError: ``keep_indices`` is not 2-D or its B differs from the images'.

    Example:
        >>> images = with_keep_indices(torch.zeros(4, 3, 32, 32), torch.zeros(4, 2, dtype=torch.int64))
        >>> images[1:3].keep_indices.shape
        torch.Size([2, 2])
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(keep_indices, torch.Tensor):
        raise TypeError(f"keep_indices must be a torch.Tensor, got {type(keep_indices).__name__}")
    if keep_indices.dtype != torch.int64:
        raise TypeError(f"keep_indices must be int64, got {keep_indices.dtype}")
    if keep_indices.dim() != 2 or images.dim() == 0 or keep_indices.shape[0] != images.shape[0]:
        raise ValueError(
            f"keep_indices must have shape (B, K) with B = images.shape[0]; got keep_indices "
            f"{tuple(keep_indices.shape)} for images {tuple(images.shape)}"
        )
    return ImagesWithKeepIndices(images, keep_indices.to(images.device, non_blocking=True))


def get_keep_indices(images: Any) -> torch.Tensor | None:
    """Return the (B, K) keep indices attached to ``images``, or None if there are none."""
    if isinstance(images, ImagesWithKeepIndices):
        return images.keep_indices
    return None


_BATCH_PRESERVING_OPS = frozenset(
    {
        torch.Tensor.to,
        torch.Tensor.cuda,
        torch.Tensor.cpu,
        torch.Tensor.pin_memory,
        torch.Tensor.float,
        torch.Tensor.half,
        torch.Tensor.bfloat16,
        torch.Tensor.double,
        torch.Tensor.type,
        torch.Tensor.contiguous,
        torch.Tensor.clone,
        torch.Tensor.detach,
        torch.clone,
        torch.detach,
    }
)
_SPLIT_OPS = frozenset({torch.Tensor.split, torch.split, torch.Tensor.chunk, torch.chunk})
_CONCAT_OPS = frozenset({torch.cat, torch.concat, torch.concatenate})


def _attach(output: Any, keep_indices: torch.Tensor) -> Any:
    # Ops such as Tensor.type(None) return a string, not a tensor.
    if not isinstance(output, torch.Tensor) or output.dim() == 0:
        return output
    if output.shape[0] != keep_indices.shape[0]:
        return output
    if keep_indices.device != output.device:
        keep_indices = keep_indices.to(output.device, non_blocking=True)
    return ImagesWithKeepIndices(output, keep_indices)


def _batch_key(key: Any) -> Any:
    """Return the part of an index expression that applies to dim 0, or None.

    None means the expression removes or reshapes the batch dimension (an
    integer, ``None``, ``...`` first, or several advanced indices), so the
    rows of the result no longer match whole images.
    """
    if isinstance(key, tuple):
        advanced = [k for k in key if isinstance(k, (torch.Tensor, list))]
        if not key:
            return slice(None)
        if len(advanced) > 1:
            return None
        key = key[0]
    if isinstance(key, (slice, range, list)):
        return key
    if isinstance(key, torch.Tensor) and key.dim() == 1 and not key.is_floating_point():
        return key
    return None


def _select_rows(images: ImagesWithKeepIndices, key: Any, output: Any) -> Any:
    batch_key = _batch_key(key)
    if batch_key is None or not isinstance(output, torch.Tensor):
        return output
    keep = images.keep_indices
    if isinstance(batch_key, torch.Tensor):
        batch_key = batch_key.to(keep.device)
    elif isinstance(batch_key, range):
        batch_key = list(batch_key)
    return _attach(output, keep[batch_key])


def _split_rows(images: ImagesWithKeepIndices, dim: int, pieces: Sequence[Any]) -> Any:
    if dim not in (0, -images.dim()):
        return pieces
    keep_pieces = images.keep_indices.split([piece.shape[0] for piece in pieces])
    return tuple(_attach(piece, keep) for piece, keep in zip(pieces, keep_pieces))


def _concat_rows(parts: Sequence[Any], dim: int, output: torch.Tensor) -> torch.Tensor:
    if not parts or not all(isinstance(part, ImagesWithKeepIndices) for part in parts):
        return output
    if dim not in (0, -parts[0].dim()):
        return output
    keep = torch.cat([part.keep_indices.to(output.device) for part in parts])
    return _attach(output, keep)
