"""Caption tokenizers: open_clip's CLIP tokenizer by default, any callable otherwise."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

Tokenizer = Callable[[Sequence[str]], torch.Tensor]

DEFAULT_TOKENIZER_MODEL = "ViT-B-32"


@functools.lru_cache(maxsize=4)
def open_clip_tokenizer(model_name: str = DEFAULT_TOKENIZER_MODEL) -> Tokenizer:
    """Return open_clip's tokenizer for ``model_name`` (CLIP BPE, (B, 77) int64).

    The BPE vocabulary ships inside the open_clip package, so this works
    offline. Raises ImportError with the install command when open_clip is
    missing.
    """
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "the default caption tokenizer is open_clip's; install it with "
            "`pip install 'pgs-dali[clip]'` or pass LoaderConfig(tokenizer=...) "
            "with any callable list[str] -> (B, T) tensor"
        ) from error
    return open_clip.get_tokenizer(model_name)


def tokenize(tokenizer: Tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Tokenize ``captions`` and check the result is a (B, T) integer tensor.

    Returns:
        (B, T) int64 tensor on the CPU.
    """
    tokens = tokenizer(list(captions))
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != len(captions):
        raise ValueError(
            f"tokenizer must return a (B, T) tensor with B={len(captions)}, "
            f"got shape {tuple(tokens.shape)}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokenizer must return integer token ids, got {tokens.dtype}")
    return tokens.to(torch.int64)
