"""Deterministic ranking of patches: stable sorts with explicit tie rules."""

from __future__ import annotations

import torch


def order_by_priority(priority: torch.Tensor, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Order each row by descending priority.

    Equal priorities are ordered by descending ``tie_break`` when it is given,
    and then by ascending index. Stable sorts make this exact on every device,
    which ``torch.topk`` does not promise for ties.

    Args:
        priority: (B, N) tensor.
        tie_break: optional (B, N) tensor, e.g. counter-based uniforms.

    Returns:
        (B, N) int64 indices, highest priority first.
    """
    if tie_break is None:
        return torch.sort(priority, dim=1, descending=True, stable=True).indices
    shuffled = torch.sort(tie_break, dim=1, descending=True, stable=True).indices
    order = torch.sort(torch.gather(priority, 1, shuffled), dim=1, descending=True, stable=True).indices
    return torch.gather(shuffled, 1, order)


def keep_after_masking(
    priority: torch.Tensor, num_masked: int, tie_break: torch.Tensor | None = None
) -> torch.Tensor:
    """Mask the ``num_masked`` highest-priority patches and return the rest.

    Args:
        priority: (B, N) masking priority.
        num_masked: M, 0 <= M < N.
        tie_break: optional (B, N) tensor ordering equal priorities, see
            :func:`order_by_priority`.

    Returns:
        (B, N - M) int64 kept indices, ascending in each row.
    """
    order = order_by_priority(priority, tie_break)
    return torch.sort(order[:, num_masked:], dim=1).values
