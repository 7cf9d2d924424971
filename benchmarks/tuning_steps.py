"""Retention of each step from the design defaults to the tuned PGS defaults.

Usage: python benchmarks/tuning_steps.py [--seeds 5]

Applies the default changes one at a time, cumulatively, and measures pgs
retention at mask ratios 0.3, 0.5 and 0.75 on the tuning half (even-indexed
photos), the held-out half (odd-indexed) and all 80 coco-mini photos.
Writes benchmarks/results/tuning_steps.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bench_common import COCO_MINI, write_result
from tune_retention import evaluate

DESIGN_DEFAULTS = {
    "edge_scale": 4,
    "edge_weight": 0.5,
    "candidate_edge_bias": 5.0,
    "epsilon": 0.3,
    "candidate_ratio": 0.05,
    "sinkhorn_iters": 20,
}
STEPS = (
    ("design defaults", {}),
    ("edge_scale 4 -> 2", {"edge_scale": 2}),
    ("edge_weight 0.5 -> 1", {"edge_weight": 1.0}),
    ("candidate_edge_bias 5 -> 10", {"candidate_edge_bias": 10.0}),
    ("sinkhorn_iters 20 -> 10", {"sinkhorn_iters": 10}),
)


def main(argv: list[str] | None = None) -> int:
    from pgs_dali.masking.config import MaskConfig
    from pgs_dali.retention import load_coco_foreground, prepare_views

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)

    samples = load_coco_foreground(COCO_MINI / "images", COCO_MINI / "annotations" / "instances_train2017.json")
    views = {
        "tune": [prepare_views(samples[0::2], seed) for seed in range(args.seeds)],
        "held_out": [prepare_views(samples[1::2], seed) for seed in range(args.seeds)],
        "all": [prepare_views(samples, seed) for seed in range(args.seeds)],
    }
    config = dataclasses.replace(MaskConfig(), **DESIGN_DEFAULTS)
    rows = []
    for label, change in STEPS:
        config = dataclasses.replace(config, **change)
        row = {"step": label, "change": change}
        for split, split_views in views.items():
            row[split] = evaluate(split_views, config)
        rows.append(row)
        print(label, {split: row[split] for split in views}, flush=True)

    tuned = {name: getattr(config, name) for name in DESIGN_DEFAULTS}
    if tuned != {name: getattr(MaskConfig(), name) for name in DESIGN_DEFAULTS}:
        print("NOTE: the last step differs from the current MaskConfig defaults", file=sys.stderr)
    path = write_result(
        "tuning_steps",
        {
            "command": "python benchmarks/tuning_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seeds": args.seeds,
            "split": "tune = even-indexed photos (40), held_out = odd-indexed (40), all = 80",
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
