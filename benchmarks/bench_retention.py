"""Object retention of every strategy on coco-mini, for BENCHMARKS.md.

Usage: python benchmarks/bench_retention.py [--seeds 5]

The same measurement as ``pgs-dali retention`` with its default strategies
and mask ratios (the oracle row included), written with hardware and date to
benchmarks/results/retention.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bench_common import COCO_MINI, write_result


def main(argv: list[str] | None = None) -> int:
    from pgs_dali.masking.config import MaskConfig
    from pgs_dali.retention import format_table, load_coco_foreground, measure_retention, prepare_views

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)

    samples = load_coco_foreground(COCO_MINI / "images", COCO_MINI / "annotations" / "instances_train2017.json")
    views = [prepare_views(samples, seed, args.image_size) for seed in range(args.seeds)]
    rows = measure_retention(views)
    print(format_table(rows))
    config = MaskConfig()
    path = write_result(
        "retention",
        {
            "command": "python benchmarks/bench_retention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "equivalent_cli": (
                f"pgs-dali retention --coco-images {COCO_MINI}/images --coco-instances "
                f"{COCO_MINI}/annotations/instances_train2017.json --seeds {args.seeds} --json"
            ),
            "photos": len(samples),
            "image_size": args.image_size,
            "mask_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("strategy", "mask_ratio")},
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
