"""open_clip drop-in: PGS patch selection in the vision tower and a ``get_data``.

Two pieces connect pgs_dali to an open_clip training run:

1. :func:`install_pgs` replaces ``model.visual.patch_dropout`` (open_clip's
   ``VisionTransformer``) or the ``patch_drop`` of a timm ViT (alone or as
   the trunk of open_clip's ``TimmModel``) with :class:`PGSPatchDropout`.
   Both slots sit after the positional embedding and before the
   pre-transformer norm (``ln_pre`` or ``norm_pre``), so the transformer
   blocks get only the prefix tokens and the K kept patch tokens.
2. :func:`get_data` builds the pgs_dali loader from open_clip_train's
   ``args`` and returns ``{"train": DataInfo(...)}``. Its dataloader yields
   ``(images, texts)`` like open_clip_train's own loaders.

How the keep indices reach the model: every image batch is an
:class:`~pgs_dali.integrations.tokens.ImagesWithKeepIndices`, so the indices
travel with the images. A forward pre-hook on ``model.visual`` reads them
from the input and :class:`PGSPatchDropout` gathers with them. This survives
what ``train_one_epoch`` of open_clip_train does with a batch, unchanged:
``images.to(device, dtype)``, DistributedDataParallel's input handling, and
``--accum-freq`` > 1, which stores each micro-batch's image tensor and later
replays it through the model. State of the kind "indices of the last batch
the loader produced" would be wrong during that replay.

For hand-written loops that pass plain tensors, :meth:`PGSPatchDropout.use`
sets the indices for the calls inside a ``with`` block.

NOTE: not tried with ``torch.compile`` (open_clip_train's
``--torchcompile``). The forward hooks and the tensor subclass may cause
graph breaks or recompiles there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pgs_dali.integrations.tokens import gather_tokens, get_keep_indices, with_keep_indices
from pgs_dali.masking.config import STRATEGIES

logger = logging.getLogger(__name__)

__all__ = [
    "DataInfo",
    "EpochCounter",
    "OpenCLIPBatches",
    "PGSPatchDropout",
    "add_pgs_args",
    "get_data",
    "install_pgs",
]


class PGSPatchDropout(nn.Module):
    """Keep the prefix tokens and the patch tokens listed in the keep indices.

    In training mode ``forward`` gathers with the indices of the batch that is
    going through the model (see the module docstring). In eval mode it is
    the identity, so evaluation and zero-shot classification see every patch.

    Args:
        num_prefix_tokens: P, the leading tokens that are always kept (the
            class token, plus register tokens in timm models).

    Shapes:
        input: (B, P + N, D) tokens after the positional embedding.
        output: (B, P + K, D) in training mode, the input in eval mode.
    """

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int):
            raise TypeError(
                f"num_prefix_tokens must be an int, got {type(num_prefix_tokens).__name__}"
            )
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_prefix_tokens = num_prefix_tokens
        # One entry per model.visual call in progress: the indices its input
        # images carry, or None. A list, because calls can nest.
        self._batch_indices: list[torch.Tensor | None] = []
        self._explicit_indices: list[torch.Tensor] = []

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep_indices = self.current_keep_indices()
        if keep_indices is None:
            raise ValueError(
                "PGSPatchDropout is in training mode but the images carry no keep_indices. "
                "Pass the loader's images unchanged, or wrap plain images with "
                "pgs_dali.integrations.tokens.with_keep_indices(images, keep_indices), "
                "or call the model inside `with pgs.use(keep_indices):`, "
                "or switch the model to eval mode to encode every patch."
            )
        return gather_tokens(x, keep_indices, self.num_prefix_tokens)

    def current_keep_indices(self) -> torch.Tensor | None:
        """Return the indices the next training-mode ``forward`` uses, or None.

        Indices carried by the images of the running ``model.visual`` call
        take precedence over those set with :meth:`use`.
        """
        if self._batch_indices and self._batch_indices[-1] is not None:
            return self._batch_indices[-1]
        if self._explicit_indices:
            return self._explicit_indices[-1]
        return None

    @contextlib.contextmanager
    def use(self, keep_indices: torch.Tensor) -> Iterator[None]:
        """Use ``keep_indices`` for plain-tensor images within the ``with`` block.

        Args:
            keep_indices: (B, K) int64, ascending patch indices of the images
                that the block passes to the model.
        """
        if not isinstance(keep_indices, torch.Tensor):
            raise TypeError(f"keep_indices must be a torch.Tensor, got {type(keep_indices).__name__}")
        self._explicit_indices.append(keep_indices)
        try:
            yield
        finally:
            self._explicit_indices.pop()

    def _enter_visual(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        images = args[0] if args else next(iter(kwargs.values()), None)
        self._batch_indices.append(get_keep_indices(images))

    def _exit_visual(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._batch_indices:
            self._batch_indices.pop()


def install_pgs(model: nn.Module) -> PGSPatchDropout:
    """Put a :class:`PGSPatchDropout` into the vision tower of an open_clip model.

    Call it before wrapping the model in DistributedDataParallel or FSDP.
    Installing twice returns the module installed first.

    Supported vision towers: open_clip's ``VisionTransformer`` (its
    ``patch_dropout``) and a timm ``VisionTransformer`` (its ``patch_drop``),
    alone or as the trunk of open_clip's ``TimmModel``. A configured random
    patch dropout is replaced, because the PGS mask already drops patches.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` (anything with a
            ``.visual``), or the vision tower itself, such as a timm ViT.

    Returns:
        The installed module; use it for :meth:`PGSPatchDropout.use`.

    Raises:
        TypeError: the model is wrapped (DDP, FSDP) or its vision tower is
            not one of the supported ViTs.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "module"):
        raise TypeError(
            f"install_pgs got a wrapped model ({type(model).__name__}); "
            "call install_pgs(model) before wrapping it in DistributedDataParallel or FSDP"
        )
    visual = getattr(model, "visual", model)
    owner, attribute, num_prefix = _find_patch_dropout(visual)

    current = getattr(owner, attribute)
    if isinstance(current, PGSPatchDropout):
        return current
    if not isinstance(current, nn.Identity):
        logger.info(
            "replacing %s %r of %s with PGSPatchDropout",
            attribute,
            current,
            type(visual).__name__,
        )

    pgs = PGSPatchDropout(num_prefix_tokens=num_prefix)
    pgs.train(visual.training)
    setattr(owner, attribute, pgs)
    visual.register_forward_pre_hook(pgs._enter_visual, with_kwargs=True)
    visual.register_forward_hook(pgs._exit_visual, with_kwargs=True, always_call=True)
    return pgs


def _find_patch_dropout(visual: nn.Module) -> tuple[nn.Module, str, int]:
    """Return (module that owns the patch-dropout slot, attribute name, P)."""
    if hasattr(visual, "patch_dropout") and hasattr(visual, "positional_embedding"):
        # open_clip VisionTransformer: the positional embedding has one row
        # per prefix token plus one per patch.
        grid_height, grid_width = visual.grid_size
        num_prefix = visual.positional_embedding.shape[0] - grid_height * grid_width
        return visual, "patch_dropout", num_prefix

    # timm VisionTransformer, alone or as the trunk of open_clip's TimmModel:
    # num_prefix_tokens counts the class token and the register tokens.
    for candidate in (visual, getattr(visual, "trunk", None)):
        if hasattr(candidate, "patch_drop") and hasattr(candidate, "num_prefix_tokens"):
            return candidate, "patch_drop", int(candidate.num_prefix_tokens)

    raise TypeError(
        f"install_pgs needs a ViT vision tower with a patch-dropout slot, got "
        f"{type(visual).__name__}: expected open_clip's VisionTransformer "
        "(attribute patch_dropout) or a timm VisionTransformer, alone or inside "
        "TimmModel (attribute patch_drop). ResNet towers cannot drop patch tokens"
    )


class EpochCounter:
    """The current epoch; same methods as open_clip_train's ``SharedEpoch``.

    The DALI pipeline runs in the training process, so no shared memory is
    needed.
    """

    def __init__(self, epoch: int = 0) -> None:
        self.value = epoch

    def set_value(self, epoch: int) -> None:
        self.value = epoch

    def get_value(self) -> int:
        return self.value


@dataclasses.dataclass
class DataInfo:
    """The ``data["train"]`` entry that open_clip_train's training loop reads.

    Attributes:
        dataloader: yields ``(images, texts)``. As in open_clip_train,
            ``num_batches`` counts this rank's batches per epoch and
            ``num_samples`` the samples per epoch over all ranks.
        sampler: always None (the DALI reader shards by rank itself).
        shared_epoch: the current epoch.
    """

    dataloader: Any
    sampler: Any = None
    shared_epoch: EpochCounter | None = None

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which seeds the masks (the reader's shuffle advances on its own)."""
        if self.shared_epoch is not None:
            self.shared_epoch.set_value(epoch)
        set_loader_epoch = getattr(self.dataloader, "set_epoch", None)
        if set_loader_epoch is not None:
            set_loader_epoch(epoch)


class OpenCLIPBatches:
    """A pgs_dali loader that yields open_clip_train's ``(images, texts)``.

    ``images`` is the (B, 3, H, W) float32 batch as an
    :class:`~pgs_dali.integrations.tokens.ImagesWithKeepIndices` carrying the
    (B, K) keep indices; ``texts`` is the (B, T) int64 token batch.

    Args:
        loader: a ``pgs_dali.PGSLoader`` (from ``pgs_dali.build_loader``).
        max_batches: batches per epoch; None means one pass over this rank's
            samples. With a cap below that, each epoch continues with the
            samples the previous one did not reach, and wraps around into
            the loader's next pass.
    """

    def __init__(self, loader: Any, max_batches: int | None = None) -> None:
        self.loader = loader
        self.max_batches = max_batches

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per epoch."""
        if self.max_batches is None:
            return self.loader.num_batches
        return min(self.max_batches, self.loader.num_batches)

    @property
    def num_samples(self) -> int:
        """Samples per epoch over all ranks, open_clip_train's meaning of it."""
        return self.num_batches * self.loader.config.batch_size * self.loader.world_size

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.max_batches is None:
            for batch in self.loader:
                yield self._to_pair(batch)
            return

        # islice stops before requesting batch max_batches + 1, so no batch is
        # read and lost: the loader's next iteration continues where this one
        # stopped. When the loader's pass ends first (skipped samples make it
        # shorter), continue into the next pass; stop after two empty
        # iterations so data that yields nothing cannot loop forever.
        remaining = self.num_batches
        empty_iterations = 0
        while remaining > 0 and empty_iterations < 2:
            produced = 0
            for batch in itertools.islice(self.loader, remaining):
                produced += 1
                yield self._to_pair(batch)
            remaining -= produced
            empty_iterations = 0 if produced else empty_iterations + 1

    @staticmethod
    def _to_pair(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return with_keep_indices(batch["image"], batch["keep_indices"]), batch["text"]


def add_pgs_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``--pgs-*`` options that :func:`get_data` reads to a trainer's parser.

    Returns:
        ``parser``, for chaining.
    """
    group = parser.add_argument_group("pgs_dali patch masking")
    group.add_argument(
        "--pgs-strategy",
        choices=STRATEGIES,
        default="pgs",
        help="patch-mask strategy (default: pgs)",
    )
    group.add_argument(
        "--pgs-mask-ratio",
        type=float,
        default=0.5,
        help="fraction of the patch tokens to drop, in [0, 1) (default: 0.5)",
    )
    group.add_argument(
        "--pgs-patch-size",
        type=int,
        default=None,
        help="ViT patch size in pixels (default: the model's patch size, else 16)",
    )
    group.add_argument(
        "--pgs-image-size",
        type=int,
        default=None,
        help="square training crop in pixels (default: the model's image size, else 224)",
    )
    group.add_argument(
        "--pgs-shuffle-buffer",
        type=int,
        default=None,
        help="samples in the reader's shuffle buffer (default: the loader's default)",
    )
    group.add_argument(
        "--pgs-device",
        default=None,
        help='device of the DALI pipeline and the masks: "cpu", "cuda", "cuda:N" '
        "(default: args.device, else auto)",
    )
    return parser


def get_data(
    args: argparse.Namespace,
    preprocess_fns: Sequence[Callable] | None = None,
    epoch: int = 0,
    tokenizer: Callable | None = None,
    *,
    model: nn.Module | None = None,
) -> dict[str, DataInfo]:
    """Build the training data for open_clip_train's ``train_one_epoch``.

    Attributes read from ``args``:

    - ``train_data``: shard list, glob or brace notation, with ``::``
      between several sources;
    - ``batch_size``, ``seed``, and ``workers`` (DALI threads, at least 1);
    - ``train_num_samples``: optional cap on the samples per epoch over all
      ranks;
    - ``rank``, ``world_size`` and ``device``, as open_clip_train's
      ``init_distributed_device`` sets them;
    - the ``--pgs-*`` options of :func:`add_pgs_args`, with their defaults
      when absent.

    Args:
        args: the trainer's parsed arguments.
        preprocess_fns: open_clip_train's (train, val) transforms. They are
            not run, because DALI crops, flips and normalizes. The crop size
            comes from the first train transform with a ``size`` when
            neither ``--pgs-image-size`` nor ``model`` gives one. The mean
            and std come from a ``Normalize`` transform when ``model`` has
            none.
        epoch: the first epoch.
        tokenizer: callable list[str] -> (B, T) int64; None uses the
            loader's default (open_clip's ViT-B-32 tokenizer).
        model: the open_clip model. When given, the patch size, the image
            size and the normalization mean and std default to its vision
            tower's (open_clip sets ``image_mean`` and ``image_std`` from the
            model's preprocessing config). Without model or Normalize
            transform the loader uses CLIP's mean and std.

    Returns:
        ``{"train": DataInfo}``.

    Raises:
        ValueError: ``args.train_data`` is missing or a setting is invalid.
    """
    from pgs_dali.loader import LoaderConfig, build_loader
    from pgs_dali.masking.config import MaskConfig

    train_data = getattr(args, "train_data", None)
    if not train_data:
        raise ValueError("args.train_data is missing: pass the training shards with --train-data")
    if getattr(args, "dataset_resampled", False):
        logger.warning("--dataset-resampled is ignored: the pgs_dali loader reads each epoch once")
    if preprocess_fns is not None:
        logger.info(
            "preprocess_fns are not run: DALI crops, flips and normalizes the images "
            "(only their crop size and Normalize mean/std are read)"
        )

    patch_size, image_size = _model_sizes(args, preprocess_fns, model)
    mask = MaskConfig(
        strategy=getattr(args, "pgs_strategy", "pgs"),
        mask_ratio=getattr(args, "pgs_mask_ratio", 0.5),
        patch_size=patch_size,
        seed=getattr(args, "seed", 0),
    )
    options: dict[str, Any] = {}
    shuffle_buffer = getattr(args, "pgs_shuffle_buffer", None)
    if shuffle_buffer is not None:
        options["shuffle_buffer"] = shuffle_buffer
    normalization = _normalization(preprocess_fns, model)
    if normalization is not None:
        options["mean"], options["std"] = normalization
    if tokenizer is not None:
        options["tokenizer"] = tokenizer
    world_size = getattr(args, "world_size", None)
    rank = getattr(args, "rank", None)
    if world_size is not None and rank is not None:
        options["rank"], options["world_size"] = rank, world_size

    config = LoaderConfig(
        data=train_data,
        batch_size=args.batch_size,
        image_size=image_size,
        mask=mask,
        device=getattr(args, "pgs_device", None) or _loader_device(args),
        num_threads=max(1, int(getattr(args, "workers", 1) or 1)),
        seed=getattr(args, "seed", 0),
        last_batch="drop",
        **options,
    )
    loader = build_loader(config)
    loader.set_epoch(epoch)

    max_batches = None
    train_num_samples = getattr(args, "train_num_samples", None)
    if train_num_samples:
        global_batch = config.batch_size * loader.world_size
        max_batches = max(1, train_num_samples // global_batch)
        if max_batches > loader.num_batches:
            logger.warning(
                "train_num_samples=%d needs %d batches per rank but the shards give %d; "
                "using %d",
                train_num_samples,
                max_batches,
                loader.num_batches,
                loader.num_batches,
            )
    batches = OpenCLIPBatches(loader, max_batches=max_batches)
    logger.info(
        "pgs_dali train data: %d batches of %d per rank, strategy %s, mask ratio %.2f, "
        "%d px crops, patch %d",
        batches.num_batches,
        config.batch_size,
        mask.strategy,
        mask.mask_ratio,
        image_size,
        patch_size,
    )
    return {"train": DataInfo(dataloader=batches, shared_epoch=EpochCounter(epoch))}


def _loader_device(args: argparse.Namespace) -> str:
    device = getattr(args, "device", None)
    if device is None:
        return "auto"
    return str(device)


def _model_sizes(
    args: argparse.Namespace, preprocess_fns: Sequence[Callable] | None, model: nn.Module | None
) -> tuple[int, int]:
    """Return (patch size, image size) from args, then the model, then the transforms."""
    patch_size = getattr(args, "pgs_patch_size", None)
    image_size = getattr(args, "pgs_image_size", None)
    visual = getattr(model, "visual", model) if model is not None else None

    if visual is not None:
        model_patch = getattr(visual, "patch_size", None)
        model_image = getattr(visual, "image_size", None)
        trunk = getattr(visual, "trunk", None)
        if model_patch is None and trunk is not None and hasattr(trunk, "patch_embed"):
            model_patch = trunk.patch_embed.patch_size
            model_image = trunk.patch_embed.img_size
        patch_size = patch_size or _square("patch size", model_patch)
        image_size = image_size or _square("image size", model_image)

    if image_size is None and preprocess_fns:
        transforms = getattr(preprocess_fns[0], "transforms", None)
        size = getattr(transforms[0], "size", None) if transforms else None
        image_size = _square("image size", size)

    return patch_size or 16, image_size or 224


def _normalization(
    preprocess_fns: Sequence[Callable] | None, model: nn.Module | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Return (mean, std) from the model, then a Normalize transform, else None."""
    visual = getattr(model, "visual", model) if model is not None else None
    mean = getattr(visual, "image_mean", None)
    std = getattr(visual, "image_std", None)
    if mean is not None and std is not None:
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    transforms = getattr(preprocess_fns[0], "transforms", None) if preprocess_fns else None
    for transform in transforms or ():
        if type(transform).__name__ == "Normalize":
            return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
    return None


def _square(name: str, size: Any) -> int | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size
    sizes = tuple(size)
    if len(sizes) == 1 or (len(sizes) == 2 and sizes[0] == sizes[1]):
        return int(sizes[0])
    raise ValueError(f"the pgs_dali loader makes square crops, but the model's {name} is {sizes}")
