"""Demo data: WebDataset shards made from the photos that scikit-image ships."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

# (file in skimage's data folder, caption written for it)
DEMO_PHOTOS = (
    ("astronaut.png", "an astronaut in a white spacesuit smiling in front of the american flag"),
    ("chelsea.png", "a ginger tabby cat looking to the side"),
    ("coffee.png", "a cup of coffee with latte art on a saucer with a spoon"),
    ("rocket.jpg", "a rocket on the launch pad under a blue sky"),
    ("motorcycle_left.png", "a red motorcycle parked in a garage next to a helmet"),
    ("hubble_deep_field.jpg", "hundreds of distant galaxies in a dark sky"),
    ("camera.png", "a black and white photo of a man with a camera on a tripod"),
    ("coins.png", "old coins laid out in rows on a dark background"),
    ("horse.png", "the silhouette of a horse"),
    ("retina.jpg", "a photograph of the back of a human eye"),
    ("immunohistochemistry.png", "a stained tissue sample under a microscope"),
    ("page.png", "a scanned page of printed text"),
    ("moon.png", "the surface of the moon with craters"),
)

# Copies of each photo; the augmentation and masks differ per copy.
DEMO_COPIES = 4


def _skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError(
            "the demo uses scikit-image's sample photos; install it with "
            "`pip install 'pgs-dali[demo]'`"
        ) from error
    return Path(skimage.data.__file__).parent


def _as_jpeg(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buffer, format="JPEG", quality=90
        )
    return buffer.getvalue()


def write_demo_shards(output_dir: str | os.PathLike, samples_per_shard: int = 20) -> list[str]:
    """Write the demo photos as WebDataset shards with index files.

    The photos are re-encoded as JPEG (quality 90), the format most
    image-caption data sets use. The immunohistochemistry photo is named
    ``ihc.png`` in recent scikit-image releases.

    Returns:
        The shard paths.
    """
    from pgs_dali.shards import ShardWriter

    data_dir = _skimage_data_dir()
    os.makedirs(output_dir, exist_ok=True)
    with ShardWriter(output_dir, samples_per_shard=samples_per_shard, prefix="demo-") as writer:
        for copy in range(DEMO_COPIES):
            for number, (name, caption) in enumerate(DEMO_PHOTOS):
                path = data_dir / name
                if not path.exists() and name == "immunohistochemistry.png":
                    path = data_dir / "ihc.png"
                if not path.exists():
                    continue
                meta = {"source": f"skimage.data/{path.name}", "caption": caption, "copy": copy}
                writer.write(
                    f"{copy:02d}{number:04d}",
                    {
                        "jpg": _as_jpeg(path),
                        "txt": caption.encode("utf-8"),
                        "json": json.dumps(meta).encode("utf-8"),
                    },
                )
    return list(writer.paths)

