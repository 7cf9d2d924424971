"""Object retention: how much of the labelled foreground a patch mask keeps.

For photos with a per-pixel object mask, the image and the mask are cropped,
flipped and resized together, fg_j is the foreground fraction of patch j, and

    retention = sum_j keep_j * fg_j / sum_j fg_j

is averaged over images and seeds, per strategy and mask ratio. Random
masking keeps 1 - rho of the foreground on average whatever the photo, so it is
the floor; the ``"oracle"`` row, which masks the patches with the least
foreground first, is the ceiling. The oracle reads the object masks, so it is
an upper bound for comparison and not a loader strategy. The masking
strategies themselves never see the object masks.

The crop is a NumPy/PyTorch re-implementation of the loader's augmentation
(DALI ``fn.random_resized_crop`` with area 0.9-1.0 and aspect ratio 3/4-4/3,
then a horizontal flip with probability 0.5). It draws crop windows from the
same distribution as DALI 2.4 but with its own generator, seeded by
(seed, image id), so results are reproducible but the windows are not the
ones a loader run would pick.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pgs_dali.masking.config import STRATEGIES, MaskConfig

logger = logging.getLogger(__name__)

ORACLE = "oracle"
DEFAULT_STRATEGIES = ("pgs", "random", "gaussian", "cluster", "grid", "block", ORACLE)
DEFAULT_MASK_RATIOS = (0.3, 0.5, 0.75)

# The loader's augmentation: DALI fn.random_resized_crop arguments.
CROP_AREA = (0.9, 1.0)
CROP_ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class ForegroundSample:
    """One photo with its object mask.

    Attributes:
        key: sample key passed to the mask strategies (the file name's stem).
        image_id: integer id used to seed the crop of this photo.
        image: (H, W, 3) uint8 RGB pixels.
        foreground: (H, W) bool, True where any labelled object is.
    """

    key: str
    image_id: int
    image: np.ndarray
    foreground: np.ndarray


@dataclasses.dataclass(frozen=True)
class CropWindow:
    """A crop rectangle in pixels of the source image, plus the flip flag."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


@dataclasses.dataclass(frozen=True)
class RetentionViews:
    """Augmented views of a set of photos for one seed.

    Attributes:
        keys: sample keys, one per view.
        images: (B, 3, S, S) float32 RGB in [0, 1], not normalized.
        patch_foreground: (B, N) float32, foreground fraction of each patch in
            [0, 1], patches row-major over the (S/p) x (S/p) grid.
        seed: the seed the crops were drawn with.
    """

    keys: list[str]
    images: torch.Tensor
    patch_foreground: torch.Tensor
    seed: int


def load_coco_foreground(
    image_dir: str | os.PathLike,
    instances_json: str | os.PathLike,
    *,
    limit: int | None = None,
) -> list[ForegroundSample]:
    """Load COCO photos with the union of their instance masks as foreground.

    Every instance counts, crowd regions (RLE) included. Images listed in the
    annotation file but missing from ``image_dir`` are skipped with a warning.

    Args:
        image_dir: folder with the COCO JPEG files.
        instances_json: COCO ``instances_*.json`` with polygon or RLE
            segmentations.
        limit: load at most this many images (in the order of the file).

    Returns:
        One :class:`ForegroundSample` per photo found, in annotation-file order.
    """
    from PIL import Image
    from pycocotools.coco import COCO

    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"COCO image folder not found: {image_dir}")
    if not Path(instances_json).is_file():
        raise ValueError(f"COCO instances file not found: {instances_json}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")

    coco = _load_coco_quietly(COCO, str(instances_json))
    samples = []
    missing = 0
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        path = image_dir / info["file_name"]
        if not path.is_file():
            missing += 1
            continue
        with Image.open(path) as opened:
            image = np.asarray(opened.convert("RGB"))

        foreground = np.zeros(image.shape[:2], dtype=bool)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)):
            mask = coco.annToMask(annotation)
            if mask.shape != foreground.shape:
                raise ValueError(
                    f"{path.name}: annotation mask is {mask.shape}, image is "
                    f"{foreground.shape}; does the annotation file match these images?"
                )
            foreground |= mask.astype(bool)

        samples.append(ForegroundSample(path.stem, int(image_id), image, foreground))
        if limit is not None and len(samples) >= limit:
            break

    if missing:
        logger.warning("%d images listed in %s are missing from %s", missing, instances_json, image_dir)
    if not samples:
        raise ValueError(f"no images of {instances_json} found in {image_dir}")
    return samples


def _load_coco_quietly(coco_class: type, path: str):
    # pycocotools prints progress to stdout, which would break --json output.
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return coco_class(path)


def sample_crop_window(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    area: tuple[float, float] = CROP_AREA,
    aspect_ratio: tuple[float, float] = CROP_ASPECT_RATIO,
    num_attempts: int = CROP_ATTEMPTS,
) -> CropWindow:
    """Draw a random-resized-crop window the way DALI's crop generator does.

    Each attempt draws an area fraction uniformly from ``area`` and an aspect
    ratio (width / height) log-uniformly from ``aspect_ratio``; the first
    window that fits is placed uniformly at random. When no attempt fits, the
    whole image is used, trimmed to the nearest allowed aspect ratio and
    centred. The horizontal flip is drawn with probability 0.5.

    Args:
        height: source image height in pixels.
        width: source image width in pixels.
        rng: NumPy generator; the caller seeds it per image and seed.
        area: range of the crop's area as a fraction of the image area.
        aspect_ratio: range of the crop's width / height.
        num_attempts: draws before falling back to the whole image.

    Returns:
        The crop window.

    Example:
        >>> window = sample_crop_window(480, 640, np.random.default_rng(0))
        >>> 0.9 * 480 * 640 <= window.height * window.width * 1.01
        True
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    log_low, log_high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    for _ in range(num_attempts):
        target_area = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(log_low, log_high))
        crop_width = round(math.sqrt(target_area * ratio))
        crop_height = round(math.sqrt(target_area / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return CropWindow(top, left, crop_height, crop_width, bool(rng.random() < 0.5))

    crop_height, crop_width = height, width
    if width / height < aspect_ratio[0]:
        crop_height = max(1, round(width / aspect_ratio[0]))
    elif width / height > aspect_ratio[1]:
        crop_width = max(1, round(height * aspect_ratio[1]))
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return CropWindow(top, left, crop_height, crop_width, bool(rng.random() < 0.5))


def crop_and_resize(
    image: np.ndarray, foreground: np.ndarray, window: CropWindow, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one crop window, resize to ``size`` x ``size`` and flip if asked.

    Image and mask go through the same bilinear, antialiased resize (DALI's
    default linear filter with antialiasing), so a resized mask pixel is the
    foreground fraction around it.

    Args:
        image: (H, W, 3) uint8 RGB.
        foreground: (H, W) bool object mask.
        window: the crop, from :func:`sample_crop_window`.
        size: output side S in pixels.

    Returns:
        ``(image, foreground)``: (3, S, S) float32 in [0, 1] and (S, S) float32
        in [0, 1].
    """
    bottom, right = window.top + window.height, window.left + window.width
    pixels = torch.from_numpy(np.array(image[window.top : bottom, window.left : right]))
    mask = torch.from_numpy(np.array(foreground[window.top : bottom, window.left : right]))
    stacked = torch.cat([pixels.permute(2, 0, 1).float() / 255.0, mask[None].float()])
    resized = F.interpolate(
        stacked[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_(0.0, 1.0)
    if window.flip:
        resized = resized.flip(-1)
    return resized[:3].contiguous(), resized[3].contiguous()


def patch_foreground_fraction(foreground: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Average a foreground map over each patch.

    Args:
        foreground: (B, H, W) float in [0, 1]; H and W multiples of
            ``patch_size``.
        patch_size: ViT patch size p.

    Returns:
        (B, N) float32 with N = (H/p)(W/p), row-major over the patch grid.

    Example:
        >>> fg = torch.zeros(1, 4, 4)
        >>> fg[0, :2, :2] = 1.0
        >>> patch_foreground_fraction(fg, 2)
        tensor([[1., 0., 0., 0.]])
    """
    if foreground.ndim != 3:
        raise ValueError(f"foreground must be (B, H, W), got shape {tuple(foreground.shape)}")
    height, width = foreground.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"foreground size {height}x{width} is not divisible by patch_size {patch_size}")
    pooled = F.avg_pool2d(foreground[:, None].float(), patch_size)
    return pooled.flatten(1)


def retention_per_image(keep: torch.Tensor, patch_foreground: torch.Tensor) -> torch.Tensor:
    """Compute sum_j keep_j fg_j / sum_j fg_j for each image.

    Args:
        keep: (B, K) int64 indices of the kept patches.
        patch_foreground: (B, N) float foreground fraction per patch.

    Returns:
        (B,) float64; NaN for an image without foreground.

    Example:
        >>> fg = torch.tensor([[1.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
        >>> retention_per_image(torch.tensor([[0, 2], [0, 1]]), fg)
        tensor([0.5000,    nan], dtype=torch.float64)
    """
    if keep.ndim != 2 or patch_foreground.ndim != 2 or keep.shape[0] != patch_foreground.shape[0]:
        raise ValueError(
            f"keep must be (B, K) and patch_foreground (B, N) with the same B, got "
            f"{tuple(keep.shape)} and {tuple(patch_foreground.shape)}"
        )
    fg = patch_foreground.double()
    kept = fg.gather(1, keep.to(fg.device)).sum(1)
    total = fg.sum(1)
    return torch.where(total > 0, kept / total.clamp_min(1e-12), torch.full_like(total, math.nan))


def oracle_keep_indices(patch_foreground: torch.Tensor, num_kept: int) -> torch.Tensor:
    """Keep the ``num_kept`` patches with the most foreground (the upper bound).

    This reads the object masks, so it is a reference for the retention
    table and not a masking strategy the loader can use.

    Args:
        patch_foreground: (B, N) float foreground fraction per patch.
        num_kept: K.

    Returns:
        (B, K) int64, ascending. Ties keep the lower index.

    Example:
        >>> oracle_keep_indices(torch.tensor([[0.0, 0.9, 0.2, 0.9]]), 2)
        tensor([[1, 3]])
    """
    if not 0 <= num_kept <= patch_foreground.shape[1]:
        raise ValueError(f"num_kept must be in [0, {patch_foreground.shape[1]}], got {num_kept}")
    order = torch.sort(patch_foreground, dim=1, descending=True, stable=True).indices
    return order[:, :num_kept].sort(dim=1).values


def prepare_views(
    samples: Sequence[ForegroundSample], seed: int, image_size: int = 224, patch_size: int = 16
) -> RetentionViews:
    """Crop, flip and resize every photo and its mask for one seed.

    The crop of photo i is drawn from ``np.random.default_rng([seed, image_id])``,
    so it depends only on the seed and the photo.

    Args:
        samples: photos with masks, from :func:`load_coco_foreground`.
        seed: crop seed (also used as the mask seed by
            :func:`measure_retention`).
        image_size: output side S; a multiple of ``patch_size``.
        patch_size: ViT patch size p.

    Returns:
        The views, with (B, 3, S, S) images and (B, N) patch foreground.
    """
    if not samples:
        raise ValueError("samples is empty")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    images, foregrounds = [], []
    for sample in samples:
        rng = np.random.default_rng([seed, sample.image_id])
        window = sample_crop_window(*sample.foreground.shape, rng)
        image, foreground = crop_and_resize(sample.image, sample.foreground, window, image_size)
        images.append(image)
        foregrounds.append(foreground)
    patch_fg = patch_foreground_fraction(torch.stack(foregrounds), patch_size)
    return RetentionViews([s.key for s in samples], torch.stack(images), patch_fg, seed)


def keep_for_strategy(views: RetentionViews, config: MaskConfig, strategy: str) -> torch.Tensor:
    """Return the (B, K) keep indices of ``strategy`` (or the oracle) on the views."""
    height, width = views.images.shape[-2:]
    if strategy == ORACLE:
        return oracle_keep_indices(views.patch_foreground, config.num_kept(height, width))
    from pgs_dali.masking import keep_indices

    return keep_indices(views.images, config, keys=views.keys, epoch=0)


def check_strategies(strategies: Sequence[str]) -> None:
    """Raise ValueError unless every name is a mask strategy or ``"oracle"``."""
    for strategy in strategies:
        if strategy != ORACLE and strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES + (ORACLE,))}"
            )


def measure_retention(
    views_per_seed: Sequence[RetentionViews],
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    mask_ratios: Sequence[float] = DEFAULT_MASK_RATIOS,
    *,
    base_config: MaskConfig | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Measure object retention per strategy and mask ratio.

    The mask seed of each view set is its crop seed. ``"grid"`` masks 3 of
    every 2x2 window whatever ``mask_ratio`` is, so it gets one row at its own
    ratio instead of one per requested ratio.

    Args:
        views_per_seed: one :class:`RetentionViews` per seed, from
            :func:`prepare_views`.
        strategies: names from ``MaskConfig`` plus ``"oracle"``.
        mask_ratios: ratios rho in [0, 1).
        base_config: settings other than strategy, ratio and seed (PGS
            defaults when None); its ``patch_size`` must match the views.
        device: where the masks are computed.
        progress: called with a short label after each strategy and ratio.

    Returns:
        Rows ``{"strategy", "mask_ratio", "retention", "std", "seed_std",
        "kept_fraction", "images", "seeds", "skipped"}``. ``retention`` is the
        mean over images with foreground and seeds, ``std`` the standard
        deviation over those image-seed values, ``seed_std`` the standard
        deviation of the per-seed means, ``skipped`` the images without
        foreground (per seed).
    """
    if not views_per_seed:
        raise ValueError("views_per_seed is empty; pass at least one seed")
    check_strategies(strategies)
    base_config = base_config or MaskConfig()
    height, width = views_per_seed[0].images.shape[-2:]
    num_patches = base_config.num_patches(height, width)
    if views_per_seed[0].patch_foreground.shape[1] != num_patches:
        raise ValueError(
            f"views have {views_per_seed[0].patch_foreground.shape[1]} patches but patch_size "
            f"{base_config.patch_size} gives {num_patches}; prepare the views with the same patch_size"
        )

    device = torch.device(device)
    on_device = [
        dataclasses.replace(view, images=view.images.to(device)) for view in views_per_seed
    ]
    rows = []
    for strategy in strategies:
        ratios = _ratios_for(strategy, mask_ratios, height, width, base_config)
        for mask_ratio in ratios:
            per_seed = []
            for view in on_device:
                # The oracle keeps as many patches as "random" does: N - round(N * rho).
                config = dataclasses.replace(
                    base_config,
                    strategy="random" if strategy == ORACLE else strategy,
                    mask_ratio=mask_ratio,
                    seed=view.seed,
                )
                keep = keep_for_strategy(view, config, strategy).cpu()
                per_seed.append(retention_per_image(keep, view.patch_foreground))
            rows.append(_summarize(strategy, mask_ratio, per_seed, keep.shape[1] / num_patches))
            if progress is not None:
                progress(f"{strategy} {mask_ratio:g}")
    return rows


def _ratios_for(
    strategy: str, mask_ratios: Sequence[float], height: int, width: int, config: MaskConfig
) -> list[float]:
    if strategy == "grid":
        grid = dataclasses.replace(config, strategy="grid")
        return [round(1.0 - grid.num_kept(height, width) / grid.num_patches(height, width), 4)]
    if strategy == "none":
        return [0.0]
    return list(mask_ratios)


def _summarize(strategy: str, mask_ratio: float, per_seed: list[torch.Tensor], kept: float) -> dict:
    values = torch.stack(per_seed)
    valid = ~values.isnan()
    seed_means = torch.stack([row[ok].mean() for row, ok in zip(values, valid)])
    flat = values[valid]
    return {
        "strategy": strategy,
        "mask_ratio": mask_ratio,
        "retention": float(flat.mean()) if flat.numel() else math.nan,
        "std": float(flat.std(unbiased=False)) if flat.numel() else math.nan,
        "seed_std": float(seed_means.std(unbiased=False)),
        "kept_fraction": round(kept, 4),
        "images": int(valid[0].sum()),
        "seeds": values.shape[0],
        "skipped": int((~valid[0]).sum()),
    }


def format_table(rows: Sequence[dict]) -> str:
    """Render retention rows as an aligned text table, oracle rows marked."""
    header = f"{'strategy':<28} {'mask_ratio':>10} {'kept':>6} {'retention':>9} {'std':>6} {'images':>6} {'seeds':>5}"
    lines = [header, "-" * len(header)]
    for row in rows:
        name = row["strategy"]
        if name == ORACLE:
            name = "oracle (upper bound)*"
        lines.append(
            f"{name:<28} {row['mask_ratio']:>10.2f} {row['kept_fraction']:>6.3f} "
            f"{row['retention']:>9.3f} {row['std']:>6.3f} {row['images']:>6d} {row['seeds']:>5d}"
        )
    if any(row["strategy"] == ORACLE for row in rows):
        lines.append("* oracle reads the object masks: an upper bound, not a loader strategy")
    skipped = max((row["skipped"] for row in rows), default=0)
    if skipped:
        lines.append(f"{skipped} image(s) without foreground skipped")
    return "\n".join(lines)


def rows_to_json(rows: Sequence[dict]) -> str:
    """Serialize rows as a JSON list (NaN written as null)."""
    clean = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows
    ]
    return json.dumps(clean, indent=2)
