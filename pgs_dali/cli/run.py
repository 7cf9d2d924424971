"""``pgs-dali run``, ``pgs-dali demo`` and ``pgs-dali preview``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

from pgs_dali.masking.config import STRATEGIES, MaskConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run``, ``demo`` and ``preview`` subcommands."""
    run_parser = subparsers.add_parser(
        "run",
        help="iterate the loader over shards and print a summary",
        description="Iterate the loader for one epoch (or --batches N) and print samples, "
        "batches, images/s, K, device and skipped samples by reason.",
    )
    add_loader_arguments(run_parser)
    add_output_arguments(run_parser)
    run_parser.set_defaults(func=run)

    demo_parser = subparsers.add_parser(
        "demo",
        help="build shards from scikit-image's sample photos and run the loader on them",
        description="Write WebDataset shards from the photos that scikit-image ships (with "
        "captions) into a temporary folder and run `pgs-dali run` on them.",
    )
    add_loader_arguments(demo_parser, data_required=False, batch_size=8)
    add_output_arguments(demo_parser)
    demo_parser.add_argument(
        "--output", metavar="DIR", help="write the demo shards here instead of a temporary folder"
    )
    demo_parser.set_defaults(func=demo)

    preview_parser = subparsers.add_parser(
        "preview",
        help="draw the same images masked by several strategies",
        description="Take the first batch of the shards (no mask), compute every requested "
        "strategy's mask on the same pixels and write one PNG: a row per image, a column "
        "per strategy.",
    )
    add_loader_arguments(preview_parser)
    preview_parser.add_argument(
        "--strategies", default="none,random,gaussian,cluster,grid,block,pgs",
        help="comma-separated strategies, one column each (default: all)",
    )
    preview_parser.add_argument("--count", type=int, default=6, help="images (rows) to draw")
    preview_parser.add_argument("--out", required=True, metavar="PNG", help="output PNG file")
    preview_parser.set_defaults(func=preview)

    for parser in (run_parser, demo_parser, preview_parser):
        show_defaults(parser)


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default: X)" to the help of options whose default is a value."""
    for action in parser._actions:
        if action.help and "default" not in action.help and action.default not in (None, False, argparse.SUPPRESS):
            action.help += " (default: %(default)s)"


def add_loader_arguments(parser: argparse.ArgumentParser, data_required: bool = True, batch_size: int = 64) -> None:
    """Add the options that build a ``LoaderConfig`` and its ``MaskConfig``."""
    defaults = MaskConfig()
    if data_required:
        parser.add_argument(
            "--data", required=True, nargs="+", metavar="SHARDS",
            help="shards: paths, a quoted glob ('shards/*.tar'), a brace pattern "
            "('shards/{000000..000009}.tar') or '::'-joined paths",
        )
    group = parser.add_argument_group("loader")
    group.add_argument("--batch-size", type=int, default=batch_size, help="samples per batch (B)")
    group.add_argument("--image-size", type=int, default=224, help="output image side in pixels")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    group.add_argument("--num-threads", type=int, default=None, help="DALI CPU threads (default: all cores)")
    group.add_argument("--seed", type=int, default=0, help="seed of shuffle, augmentation and masks")
    group.add_argument("--shuffle-buffer", type=int, default=1000, help="reader shuffle buffer in samples (0: no shuffle)")
    group.add_argument("--no-flip", action="store_true", help="turn off the random horizontal flip")
    group.add_argument(
        "--resize-filter", choices=("linear", "cubic"), default="linear",
        help="antialiased filter for shrinking crops (cubic is slower on the CPU)",
    )
    group.add_argument("--on-error", choices=("skip", "raise"), default="skip", help="bad-sample policy")
    group.add_argument("--last-batch", choices=("partial", "drop", "pad"), default="partial", help="what to do with the last short batch")
    group.add_argument("--max-pixels", type=int, default=None, help="reject images with more pixels than this (by header)")
    group.add_argument("--cache-dir", default=None, help="folder for index files of read-only shard folders")
    group.add_argument("--epoch", type=int, default=0, help="epoch number that seeds the masks")
    mask = parser.add_argument_group("mask")
    mask.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy, help="masking strategy")
    mask.add_argument("--mask-ratio", type=float, default=defaults.mask_ratio, help="fraction of patches masked, in [0, 1)")
    mask.add_argument("--patch-size", type=int, default=defaults.patch_size, help="ViT patch size in pixels")
    mask.add_argument("--candidate-ratio", type=float, default=defaults.candidate_ratio, help="PGS candidates as a fraction of patches")
    mask.add_argument("--edge-scale", type=int, default=defaults.edge_scale, help="PGS luma pooling factor before Sobel")
    mask.add_argument("--edge-weight", type=float, default=defaults.edge_weight, help="PGS edge weight (lambda) of the keep row")
    mask.add_argument("--candidate-edge-bias", type=float, default=defaults.candidate_edge_bias, help="PGS candidate edge avoidance (beta)")
    mask.add_argument("--epsilon", type=float, default=defaults.epsilon, help="PGS Sinkhorn entropic regularization")
    mask.add_argument("--sinkhorn-iters", type=int, default=defaults.sinkhorn_iters, help="PGS Sinkhorn iterations")
    mask.add_argument("--neighborhood-radius", type=int, default=None, help="PGS candidate reach in patches (default: whole image)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--batches``, ``--json``, ``--preview`` and ``--no-progress``."""
    parser.add_argument("--batches", type=int, default=None, help="stop after N batches (default: one epoch)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--preview", metavar="PNG", help="write the first images with masked patches shaded")
    parser.add_argument("--preview-count", type=int, default=8, help="images in the preview")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def mask_config_from_args(args: argparse.Namespace, strategy: str | None = None) -> MaskConfig:
    """Build the ``MaskConfig`` that the command-line options describe."""
    return MaskConfig(
        strategy=strategy or args.strategy,
        mask_ratio=args.mask_ratio,
        patch_size=args.patch_size,
        candidate_ratio=args.candidate_ratio,
        edge_scale=args.edge_scale,
        edge_weight=args.edge_weight,
        candidate_edge_bias=args.candidate_edge_bias,
        epsilon=args.epsilon,
        sinkhorn_iters=args.sinkhorn_iters,
        neighborhood_radius=args.neighborhood_radius,
        seed=args.seed,
    )


def loader_config_from_args(args: argparse.Namespace, data: Any, strategy: str | None = None):
    """Build the ``LoaderConfig`` that the command-line options describe."""
    from pgs_dali.loader import DEFAULT_MAX_PIXELS, LoaderConfig

    return LoaderConfig(
        data=data,
        batch_size=args.batch_size,
        image_size=args.image_size,
        horizontal_flip=not args.no_flip,
        resize_filter=args.resize_filter,
        num_threads=args.num_threads,
        device=args.device,
        shuffle_buffer=args.shuffle_buffer,
        seed=args.seed,
        mask=mask_config_from_args(args, strategy),
        on_error=args.on_error,
        last_batch=args.last_batch,
        max_pixels=args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
        index_cache_dir=args.cache_dir,
    )


def run(args: argparse.Namespace) -> int:
    """Run the loader over ``args.data`` and print the summary."""
    return _run_loader(args, data_argument(args.data))


def data_argument(values: list[str]) -> str | list[str]:
    """Return one ``--data`` value as is, several (a shell-expanded glob) as a list."""
    return values[0] if len(values) == 1 else list(values)


def demo(args: argparse.Namespace) -> int:
    """Write the sample-photo shards, then run the loader over them."""
    from pgs_dali.demo import write_demo_shards

    if args.output:
        paths = write_demo_shards(args.output)
        return _run_loader(args, paths)
    with tempfile.TemporaryDirectory(prefix="pgs_dali_demo_") as folder:
        paths = write_demo_shards(folder)
        if not args.json:
            print(f"wrote {len(paths)} demo shards to {folder}", file=sys.stderr)
        return _run_loader(args, paths)


def _run_loader(args: argparse.Namespace, data: Any) -> int:
    from tqdm import tqdm

    from pgs_dali.loader import build_loader
    from pgs_dali.preview import batch_preview

    config = loader_config_from_args(args, data)
    loader = build_loader(config)
    loader.set_epoch(args.epoch)
    total = len(loader) if args.batches is None else min(args.batches, len(loader))
    progress = tqdm(total=total, unit="batch", disable=args.no_progress, file=sys.stderr)

    keep = None
    samples = 0
    first_batch_samples = 0
    first_batch_s = 0.0
    start = time.perf_counter()
    for batch_number, batch in enumerate(loader):
        if batch_number == 0:
            first_batch_s = time.perf_counter() - start
            first_batch_samples = len(batch["key"])
            keep = batch["keep_indices"].shape[1]
            if args.preview:
                image = batch_preview(
                    batch, config.mask.patch_size, config.mean, config.std, count=args.preview_count
                )
                image.save(args.preview)
        samples += len(batch["key"])
        progress.update(1)
        if args.batches is not None and batch_number + 1 >= args.batches:
            break
    elapsed = time.perf_counter() - start
    progress.close()

    # The first batch includes pipeline start-up (index reading, DALI build,
    # tokenizer load); the rate after it is the rate a training loop gets.
    steady_s = elapsed - first_batch_s
    steady_samples = samples - first_batch_samples
    if steady_samples > 0 and steady_s > 0:
        images_per_s = steady_samples / steady_s
    else:
        images_per_s = samples / elapsed if elapsed > 0 else None

    summary = loader.summary()
    rows, cols = config.image_size // config.mask.patch_size, config.image_size // config.mask.patch_size
    report = {
        "delivered": samples,
        "read": summary["read"],
        "skipped": summary["skipped"],
        "skipped_total": summary["skipped_total"],
        "skipped_samples": summary["skipped_samples"],
        "excluded_by_index": summary["excluded_by_index"],
        "excluded_samples": summary["excluded_samples"],
        "padded": summary["padded"],
        "dropped": summary["dropped"],
        "batches": summary["batches"],
        "epoch_samples": summary["epoch_samples"],
        "elapsed_s": round(elapsed, 3),
        "startup_s": round(first_batch_s, 3),
        "images_per_s": round(images_per_s, 2) if images_per_s else None,
        "keep": keep if keep is not None else config.mask.num_kept(config.image_size, config.image_size),
        "patches": rows * cols,
        "strategy": config.mask.strategy,
        "mask_ratio": config.mask.mask_ratio,
        # grid always masks 3 of 4 patches and none masks nothing.
        "effective_mask_ratio": round(1 - (keep if keep is not None else rows * cols) / (rows * cols), 4),
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "device": str(loader.device),
        "rank": loader.rank,
        "world_size": loader.world_size,
        "preview": args.preview,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(format_summary(report))
    return 0


def format_summary(report: dict[str, Any]) -> str:
    """Format a ``pgs-dali run`` report as readable lines."""
    lines = [
        f"samples delivered : {report['delivered']} of {report['read']} read "
        f"({report['epoch_samples']} in this rank's epoch)",
        f"batches           : {report['batches']} (batch size {report['batch_size']}, "
        f"{report['image_size']} px images)",
        f"throughput        : {report['images_per_s']} images/s after the first batch "
        f"({report['elapsed_s']} s in all, {report['startup_s']} s to the first batch)",
        f"mask              : {report['strategy']}, ratio {report['effective_mask_ratio']}, "
        f"keeps K={report['keep']} of N={report['patches']} patches",
        f"device            : {report['device']} (rank {report['rank']} of {report['world_size']})",
        f"padded / dropped  : {report['padded']} / {report['dropped']}",
        f"skipped at run    : {report['skipped_total']}"
        + (f" {report['skipped']}" if report["skipped"] else ""),
    ]
    for item in report["skipped_samples"]:
        lines.append(f"  - {item['shard']} key {item['key']!r}: {item['reason']}")
    excluded = sum(report["excluded_by_index"].values())
    lines.append(
        f"left out by index : {excluded}"
        + (f" {report['excluded_by_index']}" if excluded else "")
    )
    for item in report["excluded_samples"]:
        lines.append(f"  - {item['shard']} key {item['key']!r}: {item['reason']}")
    if report["preview"]:
        lines.append(f"preview           : {report['preview']}")
    return "\n".join(lines)


def preview(args: argparse.Namespace) -> int:
    """Write a PNG with the same images masked by several strategies."""
    from pgs_dali.loader import build_loader
    from pgs_dali.masking import keep_indices
    from pgs_dali.preview import denormalize, masked_patch_grid, preview_grid, shade_masked

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    config = loader_config_from_args(args, data_argument(args.data), strategy="none")
    batch = next(iter(build_loader(config)))
    images = batch["image"][: args.count].float()
    keys = batch["key"][: args.count]
    height, width = images.shape[-2:]
    pixels_float = (images * torch_tensor(config.std) + torch_tensor(config.mean)).clamp(0, 1)
    pixels = denormalize(images, config.mean, config.std)

    columns = []
    for strategy in strategies:
        mask_config = mask_config_from_args(args, strategy)
        keep = keep_indices(pixels_float, mask_config, keys=keys, epoch=args.epoch)
        masked = masked_patch_grid(keep, height, width, mask_config.patch_size).numpy()
        columns.append([shade_masked(pixels[i], masked[i], mask_config.patch_size) for i in range(len(keys))])
    rows = [[column[i] for column in columns] for i in range(len(keys))]
    titles = [f"{s} ({args.mask_ratio})" if s not in ("none", "grid") else s for s in strategies]
    labels = [[key.split("/")[-1]] + [""] * (len(strategies) - 1) for key in keys]
    preview_grid(rows, column_titles=titles, tile_labels=labels).save(args.out)
    print(f"wrote {args.out}: {len(keys)} images x {len(strategies)} strategies")
    return 0


def torch_tensor(values):
    """Return a (1, 3, 1, 1) float tensor of per-channel ``values``."""
    import torch

    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)
