"""Benchmark the mask op alone: every strategy and the released-code style.

Usage: python benchmarks/bench_mask_op.py [--device cpu] [--repeats 3] [--quick]

Times are wall time and process CPU time per batch (wall / CPU in the
printed lines). Two sweeps on coco-mini crops: batch size 32..512 at 224 px, and image size
160..336 px at batch 64. At each point the strategies and the
released-code-style op (pgs_dali.baselines) run on the same batch, in rounds
that alternate their order. Each run is the median of several calls. Writes
benchmarks/results/mask_op_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from bench_common import coco_photo_batch, time_call, write_result

STRATEGIES = ("pgs", "random", "gaussian", "cluster", "grid", "block")
RELEASED = "released"
BATCH_SIZES = (32, 64, 128, 256, 512)
IMAGE_SIZES = (160, 224, 288, 336)


def mask_op(strategy: str, images: torch.Tensor, keys: list[str], mask_ratio: float, uint8: bool = False):
    """Return a no-argument callable that computes one batch of masks.

    With ``uint8`` the pgs_dali strategies get the batch as uint8 in [0, 255],
    as the loader passes it; the released style always gets float32.
    """
    from pgs_dali.baselines import released_style_keep_indices
    from pgs_dali.masking import keep_indices, sample_key_ids
    from pgs_dali.masking.config import MaskConfig

    if strategy == RELEASED:
        generator = torch.Generator(device=images.device).manual_seed(0)
        return lambda: released_style_keep_indices(images, mask_ratio, generator=generator)
    config = MaskConfig(strategy=strategy, mask_ratio=mask_ratio)
    key_ids = sample_key_ids(keys).to(images.device)
    pixels = (images * 255).round().to(torch.uint8) if uint8 else images
    return lambda: keep_indices(pixels, config, keys=key_ids)


def measure_point(
    sweep: str, batch_size: int, image_size: int, device: str, repeats: int, mask_ratio: float, uint8: bool = False
) -> list[dict]:
    """Time every strategy and the released style at one (batch, size) point."""
    from pgs_dali.cli.bench import interleaved_runs

    images, keys = coco_photo_batch(batch_size, image_size)
    images = images.to(device)
    cases = list(STRATEGIES) + [RELEASED]
    calls = {case: mask_op(case, images, keys, mask_ratio, uint8) for case in cases}
    runs = interleaved_runs(cases, lambda case: time_call(calls[case]), repeats)
    rows = []
    for case, timings in runs.items():
        wall = statistics.median(t[0] for t in timings)
        cpu = statistics.median(t[1] for t in timings)
        rows.append(
            {
                "sweep": sweep,
                "strategy": case,
                "batch_size": batch_size,
                "image_size": image_size,
                "device": device,
                "mask_ratio": mask_ratio,
                "input": "float32" if case == RELEASED or not uint8 else "uint8",
                "torch_threads": torch.get_num_threads(),
                "ms_per_batch": round(1000 * wall, 3),
                "cpu_ms_per_batch": round(1000 * cpu, 3),
                "images_per_s": round(batch_size / wall, 1),
                "ms_runs": [round(1000 * t[0], 3) for t in timings],
                "cpu_ms_runs": [round(1000 * t[1], 3) for t in timings],
            }
        )
    by_case = {row["strategy"]: row for row in rows}
    ratio = by_case[RELEASED]["ms_per_batch"] / by_case["pgs"]["ms_per_batch"]
    cpu_ratio = by_case[RELEASED]["cpu_ms_per_batch"] / by_case["pgs"]["cpu_ms_per_batch"]
    for row in rows:
        row["released_over_pgs"] = round(ratio, 2)
        row["released_over_pgs_cpu_time"] = round(cpu_ratio, 2)
    print(
        f"{sweep:>5} B={batch_size:<4} S={image_size:<4} "
        + " ".join(f"{row['strategy']}={row['ms_per_batch']:.1f}/{row['cpu_ms_per_batch']:.0f}ms" for row in rows)
        + f"  released/pgs={ratio:.1f}x (CPU time {cpu_ratio:.1f}x)",
        flush=True,
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per point (default: 3)")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="mask ratio (default: 0.5)")
    parser.add_argument("--quick", action="store_true", help="two small points only, for a smoke test")
    parser.add_argument("--name", default=None, help="result file name (default: mask_op_<device>)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--uint8", action="store_true", help="give pgs_dali's strategies uint8 input, as the loader does")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="batch sweep at 224 px")
    parser.add_argument("--image-sizes", default=",".join(map(str, IMAGE_SIZES)), help="size sweep at batch 64")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    batch_sizes = [int(value) for value in args.batch_sizes.split(",") if value]
    image_sizes = [int(value) for value in args.image_sizes.split(",") if value]
    if args.quick:
        batch_sizes, image_sizes = [32], [160]
    rows = []
    with torch.inference_mode():
        for batch_size in batch_sizes:
            rows += measure_point("batch", batch_size, 224, args.device, args.repeats, args.mask_ratio, args.uint8)
        for image_size in image_sizes:
            rows += measure_point("size", 64, image_size, args.device, args.repeats, args.mask_ratio, args.uint8)

    name = args.name or f"mask_op_{args.device.split(':')[0]}"
    path = write_result(
        name,
        {
            "command": "python benchmarks/bench_mask_op.py " + " ".join(argv or sys.argv[1:]),
            "repeats": args.repeats,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
