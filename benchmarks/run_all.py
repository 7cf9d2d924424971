"""Run every benchmark in order and redraw the figures (``make bench``).

Usage: python benchmarks/run_all.py [--skip NAME,...]

Steps: shards, retention, tuning_steps, mask_op, loader, scaling, memory,
profile, gallery, plots, with the arguments behind the records in
benchmarks/results. On an idle 2-core machine the whole run takes about
half an hour (an estimate from the single steps), most of it in the loader
scaling sweeps. The gallery step needs
``pgs-dali preview``. Stops at the first failing step.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARDS = HERE.parent / "runs" / "bench-shards"

# Each step is a list of script invocations (script name, then arguments),
# the ones behind the records in benchmarks/results.
STEPS = {
    "shards": [["make_bench_shards.py"]],
    "retention": [["bench_retention.py"]],
    "tuning_steps": [["tuning_steps.py"]],
    "mask_op": [
        ["bench_mask_op.py", "--repeats", "3", "--threads", "1"],
        [
            "bench_mask_op.py", "--repeats", "3", "--threads", "1", "--uint8",
            "--batch-sizes", "32,64,128,256", "--image-sizes", "", "--name", "mask_op_cpu_uint8",
        ],
    ],
    "loader": [["bench_loader.py", "--repeats", "3"]],
    "scaling": [["bench_scaling.py", "--repeats", "3"]],
    "memory": [["memory_long_run.py", "--batches", "6000"]],
    "profile": [
        ["profile_loader.py", "--strategy", "none"],
        ["profile_loader.py", "--strategy", "pgs", "--torch-threads", "1"],
        ["profile_loader.py", "--strategy", "pgs", "--torch-threads", "2"],
    ],
    "plots": [["plots.py"]],
}


def gallery_command() -> list[str]:
    """Return the ``pgs-dali preview`` command that draws the mask gallery."""
    return [
        sys.executable, "-m", "pgs_dali.cli", "preview",
        "--data", str(SHARDS / "coco-*.tar"),
        "--strategies", "random,gaussian,cluster,block,grid,pgs",
        "--count", "6", "--batch-size", "16", "--mask-ratio", "0.5", "--device", "cpu",
        "--out", str(RESULTS / "gallery.png"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    order = ["shards", "retention", "tuning_steps", "mask_op", "loader", "scaling", "memory", "profile", "gallery", "plots"]
    unknown = skip - set(order)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(order)}")

    for name in order:
        if name in skip:
            continue
        if name == "gallery":
            commands = [gallery_command()]
        else:
            commands = [[sys.executable, str(HERE / script), *arguments] for script, *arguments in STEPS[name]]
        for command in commands:
            print(f"== {name}: {' '.join(command)}", flush=True)
            status = subprocess.call(command, cwd=HERE)
            if status != 0:
                print(f"step {name} failed with exit status {status}", file=sys.stderr)
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
