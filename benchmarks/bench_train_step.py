"""Benchmark one CLIP training step at mask ratios 0, 0.3 and 0.5.

Usage:
    python benchmarks/bench_train_step.py [--model small|ViT-B-16|...] [--device cpu]
        [--batch-size 16] [--repeats 5] [--steps 3] [--json PATH]

The model is the reduced open_clip ViT of examples/train_open_clip.py
(112 px, patch 16, width 128, 3 blocks) unless --model names an open_clip
architecture, which is built with random weights (nothing is downloaded).
Every case trains on the same fixed synthetic batch, with
``install_pgs`` and random sorted keep indices of K = N - round(N * ratio)
patches. Ratio 0 keeps all N patches through the same gather. The mask
computation itself is not timed, because the point is the model step.

For each ratio it measures:

- step: AdamW training step (forward of both towers, ClipLoss, backward,
  optimizer step);
- vision: forward and backward of the vision tower alone (image features
  summed into a scalar).

The ratios run in interleaved rounds whose order alternates. Each round
times ``--steps`` calls per case after one untimed call. The table shows the
median over all timed calls, the vision share (vision / step), and both
times relative to ratio 0. The JSON also has the fastest call per case.
On a machine shared with other jobs, ``--threads 1`` gives steadier numbers
than several intra-op threads competing for the same cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (0.0, 0.3, 0.5)


def load_small_config() -> Callable[..., dict]:
    """Return ``small_clip_config`` from examples/train_open_clip.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_open_clip", ROOT / "examples" / "train_open_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.small_clip_config


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    if args.model == "small":
        config = load_small_config()(args.image_size, args.patch_size, args.width, args.layers)
        model = open_clip.CLIP(**config)
    else:
        model = open_clip.create_model(args.model, pretrained=None)
    return model.to(args.device)


def random_keep(batch_size: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Return (B, K) sorted random patch indices, K = N - round(N * ratio)."""
    kept = num_patches - round(num_patches * ratio)
    rows = [torch.randperm(num_patches, generator=generator)[:kept].sort().values for _ in range(batch_size)]
    return torch.stack(rows)


def make_cases(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, dict]:
    """Return per ratio: the batch, the step callable and the vision callable."""
    import open_clip

    from pgs_dali.integrations.open_clip import install_pgs
    from pgs_dali.integrations.tokens import with_keep_indices

    install_pgs(model)
    model.train()
    visual = model.visual
    image_size = visual.image_size[0]
    grid_height, grid_width = visual.grid_size
    num_patches = grid_height * grid_width

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator).to(args.device)
    texts = torch.randint(1, 49407, (args.batch_size, 77), generator=generator).to(args.device)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    cases = {}
    for ratio in RATIOS:
        keep = random_keep(args.batch_size, num_patches, ratio, generator).to(args.device)
        batch = with_keep_indices(images, keep)

        def step(batch=batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            image_features, text_features, logit_scale = model(batch, texts)
            loss_fn(image_features, text_features, logit_scale).backward()
            optimizer.step()

        def vision(batch=batch) -> None:
            model.zero_grad(set_to_none=True)
            model.encode_image(batch).float().sum().backward()

        cases[f"{ratio:g}"] = {"ratio": ratio, "tokens": 1 + keep.shape[1], "step": step, "vision": vision}
    return cases


def time_calls(function: Callable[[], None], calls: int, device: str) -> list[float]:
    """Return the wall time in seconds of ``calls`` calls, after one untimed call."""

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    function()
    synchronize()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def run(args: argparse.Namespace) -> dict:
    from pgs_dali.cli.bench import hardware_info, interleaved_runs

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    cases = make_cases(args, model)

    def measure(label: str) -> dict[str, list[float]]:
        case = cases[label]
        return {
            "step": time_calls(case["step"], args.steps, args.device),
            "vision": time_calls(case["vision"], args.steps, args.device),
        }

    rounds = interleaved_runs(list(cases), measure, args.repeats)
    rows = []
    for label, results in rounds.items():
        step_times = [t for result in results for t in result["step"]]
        vision_times = [t for result in results for t in result["vision"]]
        step = statistics.median(step_times)
        vision = statistics.median(vision_times)
        rows.append(
            {
                "mask_ratio": cases[label]["ratio"],
                "vision_tokens": cases[label]["tokens"],
                "step_ms": round(step * 1000, 2),
                "vision_ms": round(vision * 1000, 2),
                "vision_share": round(vision / step, 3),
                # The fastest calls: less affected by other processes on a shared machine.
                "step_min_ms": round(min(step_times) * 1000, 2),
                "vision_min_ms": round(min(vision_times) * 1000, 2),
            }
        )
    base = rows[0]
    for row in rows:
        row["step_vs_ratio_0"] = round(row["step_ms"] / base["step_ms"], 3)
        row["vision_vs_ratio_0"] = round(row["vision_ms"] / base["vision_ms"], 3)

    return {
        "benchmark": "train_step",
        "command": " ".join(["python", "benchmarks/bench_train_step.py", *sys.argv[1:]]),
        "model": args.model,
        "model_config": None if args.model != "small" else {
            "image_size": args.image_size, "patch_size": args.patch_size,
            "width": args.width, "layers": args.layers,
        },
        "batch_size": args.batch_size,
        "device": args.device,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "hardware": hardware_info(),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    header = f"{'ratio':>5} {'tokens':>6} {'step ms':>9} {'vision ms':>9} {'vision share':>12} {'step/r0':>7} {'vision/r0':>9}"
    lines = [header, "-" * len(header)]
    for row in result["rows"]:
        lines.append(
            f"{row['mask_ratio']:>5.1f} {row['vision_tokens']:>6d} {row['step_ms']:>9.1f} "
            f"{row['vision_ms']:>9.1f} {row['vision_share']:>12.2f} "
            f"{row['step_vs_ratio_0']:>7.2f} {row['vision_vs_ratio_0']:>9.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="small", help='"small" (the example\'s reduced ViT) or an open_clip model name'
    )
    parser.add_argument("--image-size", type=int, default=112, help="small model: image side in pixels")
    parser.add_argument("--patch-size", type=int, default=16, help="small model: patch side in pixels")
    parser.add_argument("--width", type=int, default=128, help="small model: channels of both towers")
    parser.add_argument("--layers", type=int, default=3, help="small model: blocks of both towers")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds over the ratios")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per case and round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help='also write the result as JSON to PATH ("-": stdout)')
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
