"""Tune the PGS defaults for object retention on coco-mini.

Usage: python benchmarks/tune_retention.py [--seeds 3] [--rounds 2]

Coordinate search: starting from the current MaskConfig defaults, each
round tries every listed value of one parameter at a time, keeps the best,
and moves on. The objective is the mean pgs retention at mask ratios 0.3,
0.5 and 0.75 on the even-indexed photos (the tuning half); the odd-indexed
photos are the held-out half, reported for the start and the end. The
object masks are only used to score; the mask op never sees them. Writes
every evaluated configuration to benchmarks/results/tuning.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from bench_common import COCO_MINI, write_result

RATIOS = (0.3, 0.5, 0.75)
GRID = {
    "edge_scale": (1, 2, 4, 8),
    "edge_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "epsilon": (0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
    "candidate_edge_bias": (0.0, 2.0, 5.0, 10.0, 20.0),
    "candidate_ratio": (0.02, 0.05, 0.1, 0.2),
    "sinkhorn_iters": (5, 10, 20, 50),
}


def evaluate(views, config) -> dict[float, float]:
    """Return mask ratio -> mean pgs retention of ``config`` on the views."""
    from pgs_dali.retention import measure_retention

    rows = measure_retention(views, ["pgs"], RATIOS, base_config=config)
    return {row["mask_ratio"]: round(row["retention"], 4) for row in rows}


def objective(scores: dict[float, float]) -> float:
    return sum(scores.values()) / len(scores)


def main(argv: list[str] | None = None) -> int:
    from pgs_dali.masking.config import MaskConfig
    from pgs_dali.retention import load_coco_foreground, prepare_views

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--params", default=",".join(GRID), help="parameters to search, in order")
    args = parser.parse_args(argv)

    samples = load_coco_foreground(COCO_MINI / "images", COCO_MINI / "annotations" / "instances_train2017.json")
    tune = [prepare_views(samples[0::2], seed) for seed in range(args.seeds)]
    held_out = [prepare_views(samples[1::2], seed) for seed in range(args.seeds)]

    start = MaskConfig()
    best = start
    best_scores = evaluate(tune, best)
    trials = [{"round": 0, "changed": None, "config": _tunables(best), "tune": best_scores}]
    print(f"start {_tunables(best)} -> {best_scores} mean {objective(best_scores):.4f}", flush=True)
    for round_index in range(1, args.rounds + 1):
        for name in args.params.split(","):
            for value in GRID[name]:
                if getattr(best, name) == value:
                    continue
                try:
                    candidate = dataclasses.replace(best, **{name: value})
                except ValueError:
                    continue
                began = time.perf_counter()
                scores = evaluate(tune, candidate)
                trials.append({"round": round_index, "changed": {name: value}, "config": _tunables(candidate), "tune": scores})
                better = objective(scores) > objective(best_scores) + 1e-4
                print(
                    f"round {round_index} {name}={value}: {scores} mean {objective(scores):.4f}"
                    f"{'  <- best' if better else ''} ({time.perf_counter() - began:.1f}s)",
                    flush=True,
                )
                if better:
                    best, best_scores = candidate, scores
                    trials[-1]["accepted"] = True

    final = {
        "start": {"config": _tunables(start), "tune": evaluate(tune, start), "held_out": evaluate(held_out, start)},
        "best": {"config": _tunables(best), "tune": best_scores, "held_out": evaluate(held_out, best)},
    }
    print(final)
    path = write_result(
        "tuning",
        {
            "command": "python benchmarks/tune_retention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seeds": args.seeds,
            "ratios": RATIOS,
            "split": "tune = even-indexed photos (40), held_out = odd-indexed photos (40)",
            "final": final,
            "trials": trials,
        },
    )
    print(f"wrote {path}")
    return 0


def _tunables(config) -> dict:
    return {name: getattr(config, name) for name in GRID}


if __name__ == "__main__":
    sys.exit(main())
