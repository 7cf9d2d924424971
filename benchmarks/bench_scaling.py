"""Loader scaling: throughput vs batch size, image size and decode threads.

Usage: python benchmarks/bench_scaling.py [--repeats 3] [--sweeps batch,size,threads]

Each sweep varies one setting around batch 64, 224 px and all CPU threads,
and measures pgs_dali with the pgs and none strategies at every point, all
points of a sweep interleaved. Each run times about --images images after a
warm-up. Writes benchmarks/results/scaling_<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

from bench_common import write_result
from make_bench_shards import make_coco_shards

SWEEPS = {
    "batch": ("batch_size", (16, 32, 64, 128)),
    "size": ("image_size", (160, 224, 288, 336)),
    "threads": ("threads", (1, 2, 4)),
}
STRATEGIES = ("none", "pgs")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from pgs_dali.cli.bench import BenchSettings, LoaderCase, interleaved_runs, measure_loader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated: batch, size, threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024, help="timed images per run (default: 1024)")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args(argv)

    shards = make_coco_shards(num_samples=args.samples)
    base = BenchSettings(
        shards=tuple(shards), batch_size=64, image_size=224, threads=os.cpu_count() or 1, device=args.device
    )
    rows = []
    for sweep in args.sweeps.split(","):
        field, values = SWEEPS[sweep]
        points = {}
        for value in values:
            settings = dataclasses.replace(base, **{field: value})
            batches = max(2, args.images // settings.batch_size)
            warmup = max(1, min(3, args.samples // settings.batch_size - batches - 1))
            settings = dataclasses.replace(settings, batches=batches, warmup=warmup)
            for strategy in STRATEGIES:
                points[f"{field}={value}:{strategy}"] = (settings, LoaderCase("pgs_dali", strategy))

        with tqdm(total=len(points) * args.repeats, desc=f"{sweep} sweep", unit="run") as bar:
            runs = interleaved_runs(
                list(points),
                lambda label: measure_loader(points[label][1], points[label][0]),
                args.repeats,
                lambda label: (bar.set_postfix_str(label), bar.update()),
            )
        for label, measurements in runs.items():
            settings, case = points[label]
            rates = [m.images_per_s for m in measurements]
            rows.append(
                {
                    "sweep": sweep,
                    "loader": case.loader,
                    "strategy": case.strategy,
                    "batch_size": settings.batch_size,
                    "image_size": settings.image_size,
                    "threads": settings.threads,
                    "device": settings.device,
                    "images_per_s": round(statistics.median(rates), 2),
                    "images_per_s_runs": [round(rate, 2) for rate in rates],
                    "batches": settings.batches,
                }
            )
            print(f"{label:<28} {statistics.median(rates):8.1f} images/s  runs {[round(r) for r in rates]}")

    path = write_result(
        f"scaling_{args.device.split(':')[0]}",
        {
            "command": "python benchmarks/bench_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "repeats": args.repeats,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
