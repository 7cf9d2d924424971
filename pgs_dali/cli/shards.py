"""``pgs-dali make-shards`` and ``pgs-dali index``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from pgs_dali.shards.validate import DEFAULT_MAX_PIXELS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-shards`` and ``index`` subcommands."""
    make_parser = subparsers.add_parser(
        "make-shards",
        help="write WebDataset shards from COCO captions or a CSV/TSV table",
        description="Write WebDataset shards (key.jpg, key.txt, key.json) with DALI index "
        "files. Images keep their original bytes. Samples whose image is missing or broken "
        "are skipped and counted.",
    )
    make_parser.add_argument("--output", required=True, metavar="DIR", help="folder for the shards")
    make_parser.add_argument(
        "--samples-per-shard", type=int, default=1000, metavar="N", help="samples per tar (default: 1000)"
    )
    make_parser.add_argument("--prefix", default="shard-", help="shard file name prefix (default: shard-)")
    make_parser.add_argument(
        "--overwrite", action="store_true",
        help="delete existing <prefix>*.tar shards and their index files in --output first",
    )
    coco = make_parser.add_argument_group("COCO captions source")
    coco.add_argument("--coco-captions", metavar="JSON", help="COCO captions file (captions_*.json)")
    coco.add_argument("--images", metavar="DIR", help="folder with the COCO images")
    table = make_parser.add_argument_group("CSV/TSV source (open_clip's column options)")
    table.add_argument("--csv", metavar="FILE", help="table with an image path and a caption per row")
    table.add_argument(
        "--csv-img-key", default="filepath", help="column of image paths, relative to the table (default: filepath)"
    )
    table.add_argument("--csv-caption-key", default="title", help="column of captions (default: title)")
    table.add_argument(
        "--csv-separator", default=None,
        help=r"column separator (default: '\t' for .tsv files, ',' otherwise)",
    )
    make_parser.set_defaults(func=run_make_shards)

    index_parser = subparsers.add_parser(
        "index",
        help="build DALI index files for shards (--verify: decode-check every sample)",
        description="Build a DALI index file next to each shard (or in --cache-dir when the "
        "shard's folder is not writable), leaving out samples the loader cannot use. "
        "With --verify, every image is decoded and every caption checked; bad samples are "
        "left out of the index and listed in a JSON and text report.",
    )
    index_parser.add_argument("shards", nargs="+", help="shard paths, globs or brace patterns")
    index_parser.add_argument("--verify", action="store_true", help="decode every image and check every caption")
    index_parser.add_argument(
        "--cache-dir", metavar="DIR", default=None,
        help="index folder for read-only shards (default: ~/.cache/pgs_dali/index)",
    )
    index_parser.add_argument(
        "--report", metavar="PATH", default=None,
        help="write the JSON report here and the text summary next to it as .txt "
        "(default with --verify: verify-report.json in the folder of the first index)",
    )
    index_parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
        help=f"reject images with more than N pixels, width x height; 0 for no limit "
        f"(default: {DEFAULT_MAX_PIXELS} = 8192 x 8192)",
    )
    index_parser.add_argument("--force", action="store_true", help="rebuild indexes that are up to date")
    index_parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
        help="shards verified in parallel (default: CPU count, at most 8)",
    )
    index_parser.set_defaults(func=run_index)


def run_make_shards(args: argparse.Namespace) -> int:
    """Convert a COCO captions file or a CSV/TSV table into shards."""
    from pgs_dali.shards.convert import coco_samples, csv_samples, write_shards

    if args.samples_per_shard < 1:
        return _fail(f"--samples-per-shard must be at least 1, got {args.samples_per_shard}")
    if bool(args.csv) == bool(args.coco_captions):
        return _fail("give exactly one source: --coco-captions JSON --images DIR, or --csv FILE")
    if args.coco_captions and not args.images:
        return _fail("--coco-captions needs --images DIR, the folder with the COCO images")

    output = Path(args.output)
    existing = sorted(output.glob(f"{args.prefix}*.tar")) if output.is_dir() else []
    if existing and not args.overwrite:
        return _fail(
            f"{output} already contains {len(existing)} shard(s) named {args.prefix}*.tar; "
            "pass --overwrite to replace them or choose another --output"
        )
    for shard in existing:
        for path in (shard, shard.with_suffix(".idx"), shard.with_suffix(".idx.json")):
            path.unlink(missing_ok=True)

    try:
        if args.coco_captions:
            samples = coco_samples(args.coco_captions, args.images)
        else:
            samples = csv_samples(args.csv, args.csv_img_key, args.csv_caption_key, args.csv_separator)
        with tqdm(unit="sample", desc="make-shards", file=sys.stderr) as progress:
            summary = write_shards(
                samples, output, args.samples_per_shard, args.prefix, on_sample=lambda: progress.update()
            )
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))
    print(summary.text(), end="")
    return 0 if summary.samples else 1


def run_index(args: argparse.Namespace) -> int:
    """Build (or verify) index files and print the summary."""
    from pgs_dali.shards.index import ensure_index
    from pgs_dali.shards.paths import expand_shard_paths
    from pgs_dali.shards.verify import ShardReport, verify_shards

    if args.max_pixels < 0:
        return _fail(f"--max-pixels must be 0 (no limit) or positive, got {args.max_pixels}")
    if args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    max_pixels = args.max_pixels or None
    try:
        paths = expand_shard_paths(args.shards)
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))

    with tqdm(total=len(paths), unit="shard", desc="verify" if args.verify else "index", file=sys.stderr) as progress:
        if args.verify:
            report = verify_shards(
                paths,
                cache_dir=args.cache_dir,
                max_pixels=max_pixels,
                workers=min(args.workers, len(paths)),
                on_done=lambda _: progress.update(),
            )
        else:
            results = []
            for path in paths:
                _, result = ensure_index(path, cache_dir=args.cache_dir, force=args.force)
                results.append(result)
                progress.update()
            report = ShardReport(results, verified=False)

    print(report.summary(), end="")
    report_path = args.report
    if report_path is None and args.verify:
        report_path = Path(report.results[0].index_path).parent / "verify-report.json"
    if report_path is not None:
        json_path, text_path = report.write(report_path)
        print(f"Report: {json_path} and {text_path}")
    return 0 if report.samples_kept else 1


def _fail(message: str) -> int:
    print(f"pgs-dali: error: {message}", file=sys.stderr)
    return 2
