"""Write benchmark shards from coco-mini, its 80 photos repeated.

Usage: python benchmarks/make_bench_shards.py [--samples 2000] [--out runs/bench-shards]

Each sample is ``<key>.jpg`` (the original COCO JPEG bytes) and ``<key>.txt``
(one of the photo's captions, taken in turn). Existing shards are reused when
a marker file records the same sample count and shard size.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"
DEFAULT_OUT = ROOT / "runs" / "bench-shards"


def make_coco_shards(
    out_dir: Path = DEFAULT_OUT,
    num_samples: int = 2000,
    samples_per_shard: int = 250,
    coco_dir: Path = COCO_MINI,
) -> list[str]:
    """Write ``num_samples`` samples cycling over coco-mini and return the shard paths."""
    from pgs_dali.shards import ShardWriter

    out_dir = Path(out_dir)
    marker = out_dir / "bench-shards.json"
    settings = {"num_samples": num_samples, "samples_per_shard": samples_per_shard}
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return json.loads(marker.read_text())["paths"]

    image_dir = coco_dir / "images"
    captions_file = coco_dir / "annotations" / "captions_train2017.json"
    if not image_dir.is_dir() or not captions_file.is_file():
        raise FileNotFoundError(f"coco-mini not found under {coco_dir}")
    coco = json.loads(captions_file.read_text())
    captions: dict[int, list[str]] = defaultdict(list)
    for annotation in coco["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"].strip())
    photos = sorted(coco["images"], key=lambda info: info["file_name"])
    payloads = [(image_dir / info["file_name"]).read_bytes() for info in photos]

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("coco-*"):
        old.unlink()
    with ShardWriter(out_dir, samples_per_shard=samples_per_shard, prefix="coco-") as writer:
        for number in range(num_samples):
            photo = number % len(photos)
            texts = captions[photos[photo]["id"]] or ["a photo"]
            caption = texts[(number // len(photos)) % len(texts)]
            writer.write(f"{number:07d}", {"jpg": payloads[photo], "txt": caption.encode("utf-8")})
    paths = list(writer.paths)
    marker.write_text(json.dumps({"settings": settings, "paths": paths}, indent=2))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples to write (default: 2000)")
    parser.add_argument("--per-shard", type=int, default=250, help="samples per shard (default: 250)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    paths = make_coco_shards(args.out, args.samples, args.per_shard)
    print(f"{len(paths)} shards in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
