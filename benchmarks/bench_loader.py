"""Loader throughput: pgs_dali (pgs, random, none) vs the open_clip-style loader.

Usage: python benchmarks/bench_loader.py [--repeats 3] [--batch-size 64] [--device cpu]

All cases read the same coco-mini shards (2000 samples, made by
make_bench_shards.py) with the same number of CPU threads or workers, in
rounds that alternate their order. Writes
benchmarks/results/loader_throughput_<device>.json with the rows of
``pgs-dali bench --json`` and the ratios the project targets:

* pgs_cost: 1 - (pgs_dali:pgs) / (pgs_dali:none), target <= 0.15 on CPU;
* pgs_dali_over_openclip: (pgs_dali:pgs) / (openclip_style:released),
  target >= 1.

A case ending in ``@1`` runs with one torch intra-op thread in the main
process (the mask op's thread pool), the others with torch's default.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench_common import write_result
from make_bench_shards import make_coco_shards

CASES = (
    "pgs_dali:none",
    "pgs_dali:random",
    "pgs_dali:pgs",
    "pgs_dali:pgs@1",
    "openclip_style:none",
    "openclip_style:released",
    "openclip_style:released@1",
    "openclip_style:pgs@1",
)


def ratios(rows: list[dict]) -> dict[str, float]:
    """Compute the target ratios from rows keyed by loader and strategy."""
    rate = {}
    for row in rows:
        suffix = f"@{row['torch_threads']}" if row.get("torch_threads") else ""
        rate[f"{row['loader']}:{row['strategy']}{suffix}"] = row["images_per_s"]
    pairs = {
        "pgs_cost": ("pgs_dali:pgs", "pgs_dali:none"),
        "pgs_cost_torch_threads_1": ("pgs_dali:pgs@1", "pgs_dali:none"),
        "pgs_dali_over_openclip": ("pgs_dali:pgs", "openclip_style:released"),
        "pgs_dali_over_openclip_torch_threads_1": ("pgs_dali:pgs@1", "openclip_style:released@1"),
        "pgs_dali_over_openclip_no_mask": ("pgs_dali:none", "openclip_style:none"),
    }
    out = {}
    for name, (numerator, denominator) in pairs.items():
        if numerator in rate and denominator in rate:
            value = rate[numerator] / rate[denominator]
            out[name] = round(1 - value, 4) if name.startswith("pgs_cost") else round(value, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from pgs_dali.cli.bench import BenchSettings, format_loader_rows, loader_rows, parse_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="LOADER:STRATEGY list")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000, help="shard samples (coco-mini repeated)")
    parser.add_argument("--name", default=None, help="result name (default: loader_throughput_<device>)")
    args = parser.parse_args(argv)

    shards = make_coco_shards(num_samples=args.samples)
    cases = [parse_case(text) for text in args.cases.split(",")]
    settings = BenchSettings(
        shards=tuple(shards),
        batch_size=args.batch_size,
        image_size=args.image_size,
        threads=args.threads,
        device=args.device,
        batches=args.batches,
        warmup=args.warmup,
    )
    with tqdm(total=len(cases) * args.repeats, desc="loader bench", unit="run") as bar:
        rows = loader_rows(cases, settings, args.repeats, lambda label: (bar.set_postfix_str(label), bar.update()))
    print(format_loader_rows(rows))
    summary = ratios(rows)
    print(summary)
    path = write_result(
        args.name or f"loader_throughput_{args.device.split(':')[0]}",
        {
            "command": "python benchmarks/bench_loader.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "samples": args.samples,
            "rows": rows,
            "ratios": summary,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
