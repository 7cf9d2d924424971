"""Long run of the loader, watching the process's resident memory (RSS).

Usage: python benchmarks/memory_long_run.py [--batches 2000] [--batch-size 16] [--image-size 96]

Iterates pgs_dali with the pgs strategy over the coco-mini benchmark shards
for --batches batches (many epochs; set_epoch advances each time) and
records the RSS of this process (DALI's threads included) every 50 batches.
Reports RSS at start (loader built), after warm-up, at the end, and the
growth after warm-up; growth above 5% is reported as a failure (exit code 1).
Writes benchmarks/results/memory_long_run.json.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

from bench_common import write_result
from make_bench_shards import make_coco_shards


def rss_mib() -> float:
    """Return this process's resident set size in MiB, read from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status; this script needs Linux")


def main(argv: list[str] | None = None) -> int:
    from pgs_dali import LoaderConfig, MaskConfig, build_loader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=200, help="batches before the reference RSS")
    parser.add_argument("--strategy", default="pgs")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--limit", type=float, default=5.0, help="allowed growth after warm-up, percent")
    args = parser.parse_args(argv)

    shards = make_coco_shards(num_samples=args.samples)
    loader = build_loader(
        LoaderConfig(
            data=shards,
            batch_size=args.batch_size,
            image_size=args.image_size,
            device="cpu",
            mask=MaskConfig(strategy=args.strategy, mask_ratio=0.5),
        )
    )
    gc.collect()
    start_rss = rss_mib()
    samples = [(0, 0.0, start_rss)]
    warm_rss = None
    done = 0
    epoch = 0
    began = time.perf_counter()
    while done < args.batches:
        loader.set_epoch(epoch)
        for batch in loader:
            done += 1
            del batch
            if done == args.warmup:
                gc.collect()
                warm_rss = rss_mib()
            if done % 50 == 0:
                samples.append((done, round(time.perf_counter() - began, 1), round(rss_mib(), 1)))
                print(f"batch {done:5d} epoch {epoch:3d} RSS {samples[-1][2]:8.1f} MiB", flush=True)
            if done >= args.batches:
                break
        epoch += 1

    gc.collect()
    end_rss = rss_mib()
    growth = 100.0 * (end_rss - warm_rss) / warm_rss
    summary = loader.summary()
    result = {
        "command": "python benchmarks/memory_long_run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "batches": done,
        "epochs_started": epoch + 1,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "strategy": args.strategy,
        "rss_start_mib": round(start_rss, 1),
        "rss_after_warmup_mib": round(warm_rss, 1),
        "warmup_batches": args.warmup,
        "rss_end_mib": round(end_rss, 1),
        "growth_after_warmup_percent": round(growth, 2),
        "limit_percent": args.limit,
        "seconds": round(time.perf_counter() - began, 1),
        "last_epoch_summary": {k: summary[k] for k in ("read", "delivered", "batches")},
        "rss_trace": samples,
    }
    path = write_result("memory_long_run", result)
    print(
        f"RSS start {start_rss:.1f} MiB, after {args.warmup} batches {warm_rss:.1f} MiB, "
        f"after {done} batches {end_rss:.1f} MiB: growth {growth:+.2f}% (limit {args.limit}%)"
    )
    print(f"wrote {path}")
    return 0 if growth <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
