"""Pictures of patch masks: images with their masked patches shaded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

_SHADE = np.array([20, 20, 28], dtype=np.float32)
_LABEL_HEIGHT = 18


def masked_patch_grid(keep_indices: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Return a (B, H/p, W/p) bool grid that is True where a patch is masked.

    Args:
        keep_indices: (B, K) int64 kept patch indices, row-major over the grid.
        height, width: image size in pixels, multiples of ``patch_size``.
        patch_size: p.

    >>> masked_patch_grid(torch.tensor([[0, 3]]), 32, 32, 16)
    tensor([[[False,  True],
             [ True, False]]])
    """
    rows, cols = height // patch_size, width // patch_size
    masked = torch.ones(keep_indices.shape[0], rows * cols, dtype=torch.bool)
    masked.scatter_(1, keep_indices.cpu(), False)
    return masked.view(-1, rows, cols)


def shade_masked(image: np.ndarray, masked: np.ndarray, patch_size: int) -> np.ndarray:
    """Darken the masked patches of one image and outline the kept ones.

    Args:
        image: (H, W, 3) uint8 RGB.
        masked: (H/p, W/p) bool, True where the patch is masked.
        patch_size: p.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    pixel_mask = np.kron(masked, np.ones((patch_size, patch_size), dtype=bool))
    out = image.astype(np.float32)
    out[pixel_mask] = 0.25 * out[pixel_mask] + 0.75 * _SHADE
    return out.round().clip(0, 255).astype(np.uint8)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Turn (B, 3, H, W) normalized float images into (B, H, W, 3) uint8 RGB."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def preview_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str] | None = None,
    tile_labels: Sequence[Sequence[str]] | None = None,
    padding: int = 4,
) -> Image.Image:
    """Tile equally sized (H, W, 3) uint8 images into one picture.

    Args:
        rows: images per row.
        column_titles: text above each column.
        tile_labels: text drawn in the top-left corner of each image, per row.
        padding: pixels between tiles.
    """
    if not rows or not rows[0]:
        raise ValueError("preview_grid needs at least one image")
    height, width = rows[0][0].shape[:2]
    top = _LABEL_HEIGHT if column_titles else 0
    columns = max(len(row) for row in rows)
    canvas = Image.new(
        "RGB",
        (columns * (width + padding) + padding, top + len(rows) * (height + padding) + padding),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(column_titles or []):
        draw.text((padding + column * (width + padding), 3), title, fill=(0, 0, 0))
    for row_index, row in enumerate(rows):
        y = top + padding + row_index * (height + padding)
        for column, image in enumerate(row):
            x = padding + column * (width + padding)
            canvas.paste(Image.fromarray(image), (x, y))
            if tile_labels and tile_labels[row_index][column]:
                label = tile_labels[row_index][column]
                box = draw.textbbox((x + 3, y + 2), label)
                draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
                draw.text((x + 3, y + 2), label, fill=(255, 255, 255))
    return canvas


def batch_preview(
    batch: dict, patch_size: int, mean: Sequence[float], std: Sequence[float], count: int = 8, columns: int = 4
) -> Image.Image:
    """Draw the first ``count`` images of a loader batch with masked patches shaded."""
    images = batch["image"][:count]
    keep = batch["keep_indices"][:count]
    height, width = images.shape[-2:]
    pixels = denormalize(images, mean, std)
    masked = masked_patch_grid(keep, height, width, patch_size).numpy()
    tiles = [shade_masked(pixels[i], masked[i], patch_size) for i in range(len(pixels))]
    keys = list(batch.get("key", [""] * len(tiles)))[: len(tiles)]
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    labels = [keys[i : i + columns] for i in range(0, len(keys), columns)]
    return preview_grid(rows, tile_labels=labels)
