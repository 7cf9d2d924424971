"""Loader scaling: throughput vs batch size, image size and decode threads.

Usage: python benchmarks/bench_scaling.py [--repeats 3] [--sweeps batch,size,threads]

Each sweep varies one setting around batch 64, 224 px and all CPU threads.
At every point it measures pgs_dali with the none and pgs strategies, and
pgs again with one torch thread for the mask op (``@1``). All points of a
sweep are interleaved. Each run times about --images images after a
warm-up. Writes benchmarks/results/scaling_<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

from bench_common import RESULTS, read_result, write_result
from make_bench_shards import make_coco_shards

SWEEPS = {
    "batch": ("batch_size", (16, 32, 64, 128)),
    "size": ("image_size", (160, 224, 288, 336)),
    "threads": ("threads", (1, 2, 4)),
}
CASES = ("pgs_dali:none", "pgs_dali:pgs", "pgs_dali:pgs@1")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from pgs_dali.cli.bench import BenchSettings, interleaved_runs, measure_loader, parse_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help="comma-separated: batch, size, threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024, help="timed images per run (default: 1024)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument(
        "--merge", action="store_true", help="keep the rows of sweeps not rerun from the existing record"
    )
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
            for text in CASES:
                case = parse_case(text)
                points[f"{field}={value} {case.label}"] = (settings, case)

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
                    "torch_threads": case.torch_threads,
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

    name = f"scaling_{args.device.split(':')[0]}"
    if args.merge and (RESULTS / f"{name}.json").is_file():
        rerun = {row["sweep"] for row in rows}
        kept = [row for row in read_result(name)["rows"] if row["sweep"] not in rerun]
        rows = kept + rows
    path = write_result(
        name,
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
