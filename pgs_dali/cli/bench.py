"""``pgs-dali bench``: loader throughput of pgs_dali and an open_clip-style loader.

Every configuration ("case") is a loader plus a mask strategy, for example
``pgs_dali:pgs`` or ``openclip_style:released``. Cases are measured in
rounds that alternate their order (ABC, CBA, ABC, ...), so slow drifts of a
shared machine hit every case alike. The summary reports medians over the
rounds and ratios between cases measured in the same run. The helpers here
are also used by the scripts under ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

LOADERS = ("pgs_dali", "openclip_style")
DEFAULT_CASES = ("pgs_dali:none", "pgs_dali:random", "pgs_dali:pgs", "openclip_style:released")


@dataclasses.dataclass(frozen=True)
class LoaderCase:
    """One loader configuration to measure.

    Attributes:
        loader: ``"pgs_dali"`` or ``"openclip_style"``.
        strategy: mask strategy. For ``pgs_dali``, a ``MaskConfig`` strategy.
            For ``openclip_style``, ``"released"`` (the released-code-style
            mask computed in the training process), ``"none"``, or a pgs_dali
            strategy computed in the training process.
        torch_threads: torch intra-op threads of the process while this case
            runs (``torch.set_num_threads``); None leaves torch's setting.
    """

    loader: str
    strategy: str
    torch_threads: int | None = None

    @property
    def label(self) -> str:
        """``loader:strategy`` or ``loader:strategy@threads``, as written on the command line."""
        suffix = f"@{self.torch_threads}" if self.torch_threads else ""
        return f"{self.loader}:{self.strategy}{suffix}"


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Settings shared by every case of a loader benchmark.

    Attributes:
        shards: shard paths (all cases read the same ones).
        batch_size: B.
        image_size: output side S in pixels.
        threads: DALI CPU threads for pgs_dali, DataLoader workers for the
            open_clip-style loader.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        mask_ratio: rho for every masking case.
        batches: timed batches per run.
        warmup: batches consumed before the clock starts.
        tokenizer: caption tokenizer; None uses open_clip's.
    """

    shards: tuple[str, ...]
    batch_size: int = 64
    image_size: int = 224
    threads: int = 2
    device: str = "cpu"
    mask_ratio: float = 0.5
    batches: int = 20
    warmup: int = 3
    tokenizer: Callable[[list[str]], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One timed run: images per second after warm-up, and start-up time."""

    images_per_s: float
    startup_s: float
    images: int
    seconds: float


def parse_case(text: str) -> LoaderCase:
    """Parse ``loader:strategy[@threads]`` into a :class:`LoaderCase`.

    Example:
        >>> parse_case("pgs_dali:pgs@1")
        LoaderCase(loader='pgs_dali', strategy='pgs', torch_threads=1)
    """
    from pgs_dali.masking.config import STRATEGIES

    body, at, threads_text = text.strip().partition("@")
    torch_threads = None
    if at:
        if not threads_text.isdigit() or int(threads_text) < 1:
            raise ValueError(f"threads after '@' must be an integer >= 1, got {text!r}")
        torch_threads = int(threads_text)
    loader, sep, strategy = body.partition(":")
    if not sep or loader not in LOADERS:
        raise ValueError(f"case must be LOADER:STRATEGY with LOADER in {', '.join(LOADERS)}, got {text!r}")
    allowed = STRATEGIES + (("released",) if loader == "openclip_style" else ())
    if strategy not in allowed:
        raise ValueError(f"strategy of {text!r} must be one of {', '.join(allowed)}")
    return LoaderCase(loader, strategy, torch_threads)


def make_loader(case: LoaderCase, settings: BenchSettings) -> Iterable[dict]:
    """Build the loader of ``case``; iterating it yields batches with ``image``."""
    from pgs_dali.masking.config import MaskConfig

    if case.loader == "pgs_dali":
        from pgs_dali.loader import LoaderConfig, build_loader

        ratio = 0.0 if case.strategy == "none" else settings.mask_ratio
        return build_loader(
            LoaderConfig(
                data=list(settings.shards),
                batch_size=settings.batch_size,
                image_size=settings.image_size,
                num_threads=settings.threads,
                device=settings.device,
                mask=MaskConfig(strategy=case.strategy, mask_ratio=ratio),
                tokenizer=settings.tokenizer,
            )
        )

    from pgs_dali.baselines import build_openclip_style_loader

    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return build_openclip_style_loader(
        list(settings.shards),
        settings.batch_size,
        image_size=settings.image_size,
        num_workers=settings.threads,
        mask=case.strategy,
        mask_ratio=settings.mask_ratio,
        device=device,
        tokenizer=settings.tokenizer,
    )


def measure_loader(case: LoaderCase, settings: BenchSettings) -> Measurement:
    """Time ``settings.batches`` batches of a fresh loader after ``settings.warmup``.

    The start-up time (building the loader, starting threads or worker
    processes, the warm-up batches) is reported apart from the throughput.
    Raises ValueError when one epoch has fewer batches than warm-up plus
    timed batches, because a new epoch would restart the open_clip-style
    workers inside the timed part.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if case.torch_threads:
        torch.set_num_threads(case.torch_threads)
    try:
        start = time.perf_counter()
        loader = make_loader(case, settings)
        batches = iter(loader)
        for _ in range(settings.warmup):
            _next_batch(batches, case)
        warm = time.perf_counter()

        images = 0
        for _ in range(settings.batches):
            images += len(_next_batch(batches, case)["image"])
        end = time.perf_counter()

        # Stop DALI threads and DataLoader workers before the next case starts.
        del batches, loader
        gc.collect()
    finally:
        torch.set_num_threads(previous_threads)
    return Measurement(images / (end - warm), warm - start, images, end - warm)


def _next_batch(batches: Iterable[dict], case: LoaderCase) -> dict:
    try:
        return next(batches)
    except StopIteration:
        raise ValueError(
            f"{case.label}: the data ran out before the timed batches ended; "
            "use more samples or fewer --batches/--warmup"
        ) from None


def interleaved_runs(
    labels: Sequence[str],
    run_one: Callable[[str], Any],
    repeats: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[Any]]:
    """Run every label ``repeats`` times, alternating the order each round.

    Round 0 runs the labels in order, round 1 in reverse, and so on, so a
    case never always runs first (cold caches) or last.

    Args:
        labels: case names.
        run_one: measures one case and returns its result.
        repeats: rounds.
        progress: called with the label after each run.

    Returns:
        label -> list of results, in round order.

    Example:
        >>> order = []
        >>> runs = interleaved_runs(["a", "b"], lambda x: order.append(x) or len(order), 2)
        >>> order, runs
        (['a', 'b', 'b', 'a'], {'a': [1, 4], 'b': [2, 3]})
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    results: dict[str, list[Any]] = {label: [] for label in labels}
    for round_index in range(repeats):
        ordered = labels if round_index % 2 == 0 else list(reversed(labels))
        for label in ordered:
            results[label].append(run_one(label))
            if progress is not None:
                progress(label)
    return results


def hardware_info() -> dict[str, Any]:
    """Describe the machine and library versions for benchmark records."""
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu_model,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    except ImportError:
        info["dali"] = None
    return info


def loader_rows(
    cases: Sequence[LoaderCase],
    settings: BenchSettings,
    repeats: int,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every case ``repeats`` times, interleaved, and return one row per case.

    Each row has ``loader``, ``strategy``, ``images_per_s`` (median over
    rounds), ``images_per_s_runs``, ``startup_s`` (median), ``batch_size``,
    ``image_size``, ``threads``, ``device``, ``mask_ratio``, ``batches`` and
    ``repeats``.
    """
    by_label = {case.label: case for case in cases}
    runs = interleaved_runs(
        list(by_label), lambda label: measure_loader(by_label[label], settings), repeats, progress
    )
    rows = []
    for label, measurements in runs.items():
        case = by_label[label]
        rates = [m.images_per_s for m in measurements]
        rows.append(
            {
                "loader": case.loader,
                "strategy": case.strategy,
                "images_per_s": statistics.median(rates),
                "images_per_s_runs": [round(rate, 2) for rate in rates],
                "startup_s": statistics.median(m.startup_s for m in measurements),
                "batch_size": settings.batch_size,
                "image_size": settings.image_size,
                "threads": settings.threads,
                "torch_threads": case.torch_threads,
                "device": settings.device,
                "mask_ratio": 0.0 if case.strategy == "none" else settings.mask_ratio,
                "batches": settings.batches,
                "repeats": repeats,
            }
        )
    return rows


def format_loader_rows(rows: Sequence[dict[str, Any]]) -> str:
    """Render loader rows as a table, with throughput relative to the first row."""
    if not rows:
        return "no rows"
    reference = rows[0]
    header = f"{'case':<28} {'images/s':>9} {'runs':<28} {'start-up s':>10} {'vs ' + reference['loader'] + ':' + reference['strategy']:>24}"
    lines = [header, "-" * len(header)]
    for row in rows:
        label = f"{row['loader']}:{row['strategy']}"
        if row.get("torch_threads"):
            label += f"@{row['torch_threads']}"
        runs = ", ".join(f"{rate:.0f}" for rate in row["images_per_s_runs"])
        ratio = row["images_per_s"] / reference["images_per_s"]
        lines.append(
            f"{label:<28} {row['images_per_s']:>9.1f} {runs:<28} {row['startup_s']:>10.2f} {ratio:>23.3f}x"
        )
    first = rows[0]
    lines.append(
        f"batch {first['batch_size']}, {first['image_size']} px, {first['threads']} threads/workers, "
        f"device {first['device']}, mask ratio {first['mask_ratio'] or rows[-1]['mask_ratio']}, "
        f"{first['batches']} timed batches x {first['repeats']} interleaved rounds (medians)"
    )
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="measure loader throughput of pgs_dali and an open_clip-style loader",
        description=(
            "Measure images per second of each LOADER:STRATEGY case on the same shards, "
            "in interleaved rounds, and report medians and ratios. Loaders: pgs_dali "
            "(strategies of MaskConfig) and openclip_style (webdataset + torchvision + "
            "DataLoader, with the mask computed in the training process: 'released' is "
            "the released-code-style PGS, any pgs_dali strategy runs pgs_dali's op)."
        ),
    )
    parser.add_argument("--data", required=True, help="shards: list, glob or brace pattern")
    parser.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help="comma-separated LOADER:STRATEGY cases, each optionally with @N to run it with N "
        "torch threads; the first is the reference of the ratios (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch (default: 64)")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (default: 224)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="DALI threads / DataLoader workers (default: CPU count, %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="mask ratio of the masking cases (default: 0.5)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="batches before the clock starts (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON row per case")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the loader benchmark and print a summary or JSON rows."""
    from tqdm import tqdm

    from pgs_dali.shards import expand_shard_paths

    try:
        cases = [parse_case(text) for text in args.cases.split(",") if text.strip()]
        if not cases:
            raise ValueError("--cases is empty")
        for name in ("batch_size", "image_size", "threads", "batches", "repeats"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
        shards = tuple(expand_shard_paths(args.data))
    except (ValueError, TypeError) as error:
        print(f"pgs-dali bench: {error}", file=sys.stderr)
        return 2

    settings = BenchSettings(
        shards=shards,
        batch_size=args.batch_size,
        image_size=args.image_size,
        threads=args.threads,
        device=args.device,
        mask_ratio=args.mask_ratio,
        batches=args.batches,
        warmup=args.warmup,
    )
    with tqdm(total=len(cases) * args.repeats, desc="bench", unit="run", file=sys.stderr, leave=False) as bar:
        try:
            rows = loader_rows(
                cases,
                settings,
                args.repeats,
                progress=lambda label: (bar.set_postfix_str(label), bar.update()),
            )
        except (ValueError, TypeError) as error:
            print(f"pgs-dali bench: {error}", file=sys.stderr)
            return 2

    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_loader_rows(rows))
    return 0
