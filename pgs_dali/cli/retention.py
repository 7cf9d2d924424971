"""``pgs-dali retention``: object retention of the mask strategies on COCO photos."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``retention`` subcommand."""
    from pgs_dali.retention import DEFAULT_MASK_RATIOS, DEFAULT_STRATEGIES

    parser = subparsers.add_parser(
        "retention",
        help="measure how much labelled foreground each mask strategy keeps",
        description=(
            "Crop COCO photos and their instance masks together the way the loader "
            "augments images, compute keep indices per strategy and report "
            "retention = sum(keep_j * fg_j) / sum(fg_j), averaged over images and "
            "seeds. The 'oracle' row masks the patches with the least foreground "
            "first; it reads the object masks and is an upper bound, not a loader "
            "strategy."
        ),
    )
    parser.add_argument("--coco-images", required=True, metavar="DIR", help="folder of COCO JPEGs")
    parser.add_argument(
        "--coco-instances", required=True, metavar="JSON", help="COCO instances_*.json file"
    )
    parser.add_argument(
        "--strategies",
        default=",".join(DEFAULT_STRATEGIES),
        help="comma-separated strategies, 'oracle' included (default: %(default)s)",
    )
    parser.add_argument(
        "--mask-ratios",
        default=",".join(f"{r:g}" for r in DEFAULT_MASK_RATIOS),
        help="comma-separated mask ratios in [0, 1) (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds", type=int, default=5, help="number of seeds 0..N-1 for crops and masks (default: 5)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="crop side in pixels (default: 224)")
    parser.add_argument("--patch-size", type=int, default=16, help="ViT patch size in pixels (default: 16)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a MaskConfig field for every strategy, e.g. --set edge_scale=2 (repeatable)",
    )
    parser.add_argument("--device", default="cpu", help="device for the masks: cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the retention measurement and print a table or JSON."""
    from tqdm import tqdm

    from pgs_dali.masking.config import MaskConfig
    from pgs_dali.retention import (
        check_strategies,
        format_table,
        load_coco_foreground,
        measure_retention,
        prepare_views,
        rows_to_json,
    )

    try:
        strategies = _split_names(args.strategies)
        check_strategies(strategies)
        mask_ratios = [_parse_ratio(text) for text in _split_names(args.mask_ratios)]
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        overrides = dict(_parse_override(text) for text in args.set)
        base_config = MaskConfig(patch_size=args.patch_size, **overrides)
        samples = load_coco_foreground(args.coco_images, args.coco_instances, limit=args.limit)
    except (ValueError, TypeError) as error:
        print(f"pgs-dali retention: {error}", file=sys.stderr)
        return 2

    views = [
        prepare_views(samples, seed, args.image_size, args.patch_size)
        for seed in tqdm(range(args.seeds), desc="cropping", unit="seed", file=sys.stderr, leave=False)
    ]
    total = sum(1 if name in ("grid", "none") else len(mask_ratios) for name in strategies)
    with tqdm(total=total, desc="masking", unit="config", file=sys.stderr, leave=False) as bar:
        try:
            rows = measure_retention(
                views,
                strategies,
                mask_ratios,
                base_config=base_config,
                device=args.device,
                progress=lambda label: (bar.set_postfix_str(label), bar.update()),
            )
        except (ValueError, TypeError) as error:
            print(f"pgs-dali retention: {error}", file=sys.stderr)
            return 2

    if args.json:
        print(rows_to_json(rows))
    else:
        settings = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
        print(
            f"object retention on {len(samples)} photos, {args.seeds} seed(s), "
            f"{args.image_size} px, patch {args.patch_size}, MaskConfig {settings}"
        )
        print(format_table(rows))
    return 0


def _split_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return names


def _parse_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"mask ratio must be a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {value}")
    return value


def _parse_override(text: str) -> tuple[str, object]:
    from pgs_dali.masking.config import MaskConfig

    name, sep, raw = text.partition("=")
    fields = {field.name: field for field in dataclasses.fields(MaskConfig)}
    if not sep or name not in fields:
        raise ValueError(
            f"--set expects FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}, got {text!r}"
        )
    if name in ("strategy", "mask_ratio", "seed", "patch_size"):
        raise ValueError(f"--set {name} is not allowed; use --strategies, --mask-ratios, --seeds or --patch-size")
    if raw.lower() == "none":
        return name, None
    try:
        value: object = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--set {name}: expected a number or None, got {raw!r}") from None
    return name, value
