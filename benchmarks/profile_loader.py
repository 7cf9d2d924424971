"""Profile one pgs_dali loader run with cProfile to show where the time goes.

Usage: python benchmarks/profile_loader.py [--strategy pgs] [--batches 20]

Runs the loader over the coco-mini benchmark shards in this process under
cProfile. DALI's decoding runs in its own C++ threads, so in the profile it
shows up as the time the Python thread waits for the pipeline's outputs.
Writes benchmarks/results/profile_<strategy>.txt with the top functions by
cumulative and by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

from bench_common import RESULTS
from make_bench_shards import make_coco_shards


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    from pgs_dali import LoaderConfig, MaskConfig, build_loader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="pgs")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    shards = make_coco_shards()
    ratio = 0.0 if args.strategy == "none" else 0.5
    loader = build_loader(
        LoaderConfig(
            data=shards,
            batch_size=args.batch_size,
            num_threads=args.threads,
            device="cpu",
            mask=MaskConfig(strategy=args.strategy, mask_ratio=ratio),
        )
    )
    batches = iter(loader)
    next(batches)  # pipeline build and first batch stay out of the profile

    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for _ in range(args.batches):
        next(batches)
    profiler.disable()
    seconds = time.perf_counter() - began

    text = io.StringIO()
    text.write(
        f"pgs_dali:{args.strategy}, batch {args.batch_size}, {args.threads} DALI threads, "
        f"{torch_threads()} torch threads, "
        f"{args.batches} batches in {seconds:.2f} s ({args.batches * args.batch_size / seconds:.1f} images/s "
        "under cProfile)\n\n"
    )
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    text.write("== by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(args.top)
    text.write("== by own time\n")
    stats.sort_stats("tottime").print_stats(args.top)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"_torch{args.torch_threads}" if args.torch_threads else ""
    path = RESULTS / f"profile_{args.strategy}{suffix}.txt"
    path.write_text(text.getvalue())
    print(text.getvalue()[:6000])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
