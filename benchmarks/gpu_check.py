"""GPU checks in one run: CPU-vs-GPU mask equality, GPU mask-op and loader speed.

Usage: python benchmarks/gpu_check.py --out DIR [--budget 540]

Meant for a machine with a CUDA GPU, run through benchmarks/gpu_check.sh.
Sections, each skipped once the time budget is spent:

1. equality: keep_indices of every strategy on the CPU and on the GPU for
   the same batch (float and uint8 input, two image sizes) must be equal,
   and a GPU row must not depend on the rest of the batch.
2. mask_op: GPU time per batch of every strategy and of the
   released-code-style op, batch 32..1024 at 224 px and 160..336 px at
   batch 256, plus the CPU time at batch 256 for the speed-up.
3. loader: pgs_dali on the GPU (none, pgs) and the open_clip-style loader
   with the released-style mask on the GPU, on generated shards. Skipped when
   DALI, webdataset or open_clip is not importable.

Writes DIR/gpu_check.json after every section, so a run cut short still
leaves its finished sections. Exit code 1 when an equality check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import coco_photo_batch, time_call  # noqa: E402

STRATEGIES = ("pgs", "random", "gaussian", "cluster", "grid", "block", "none")


def check_equality(device: str) -> dict:
    """Compare CPU and GPU keep indices of every strategy on the same batches."""
    from pgs_dali.masking import keep_indices
    from pgs_dali.masking.config import MaskConfig

    results = []
    for image_size in (224, 160):
        images, keys = coco_photo_batch(64, image_size)
        inputs = {"float32": images, "uint8": (images * 255).round().to(torch.uint8)}
        for dtype, batch in inputs.items():
            for strategy in STRATEGIES:
                config = MaskConfig(strategy=strategy, mask_ratio=0.5)
                cpu = keep_indices(batch, config, keys=keys, epoch=1)
                gpu = keep_indices(batch.to(device), config, keys=keys, epoch=1).cpu()
                single = keep_indices(batch[5:6].to(device), config, keys=keys[5:6], epoch=1).cpu()
                results.append(
                    {
                        "strategy": strategy,
                        "image_size": image_size,
                        "dtype": dtype,
                        "equal": bool(torch.equal(cpu, gpu)),
                        "rows_differing": int((cpu != gpu).any(dim=1).sum()),
                        "batch_independent_on_gpu": bool(torch.equal(single[0], gpu[5])),
                    }
                )
    failures = [r for r in results if not (r["equal"] and r["batch_independent_on_gpu"])]
    return {"checks": results, "failures": len(failures), "passed": not failures}


def bench_mask_op(device: str, deadline: float) -> dict:
    """Time every strategy and the released-style op on the GPU (and CPU at B=256)."""
    from bench_mask_op import RELEASED, mask_op

    from pgs_dali.cli.bench import interleaved_runs

    points = [("batch", b, 224) for b in (32, 64, 128, 256, 512, 1024)]
    points += [("size", 256, s) for s in (160, 224, 288, 336)]
    cases = list(STRATEGIES[:-1]) + [RELEASED]
    rows = []
    for sweep, batch_size, image_size in points:
        if time.perf_counter() > deadline:
            rows.append({"skipped": f"{sweep} B={batch_size} S={image_size}: time budget spent"})
            continue
        images, keys = coco_photo_batch(batch_size, image_size)
        images = images.to(device)
        calls = {case: mask_op(case, images, keys, 0.5) for case in cases}
        runs = interleaved_runs(cases, lambda case: time_call(calls[case]), 3)
        for case, timings in runs.items():
            median = sorted(t[0] for t in timings)[1]
            rows.append(
                {
                    "sweep": sweep,
                    "strategy": case,
                    "batch_size": batch_size,
                    "image_size": image_size,
                    "device": device,
                    "ms_per_batch": round(1000 * median, 3),
                    "images_per_s": round(batch_size / median, 1),
                }
            )
        print(f"mask op {sweep} B={batch_size} S={image_size} done", flush=True)

    cpu_rows = []
    if time.perf_counter() < deadline:
        images, keys = coco_photo_batch(256, 224)
        for case in ("pgs", RELEASED):
            seconds = time_call(mask_op(case, images, keys, 0.5))[0]
            cpu_rows.append({"strategy": case, "batch_size": 256, "image_size": 224, "device": "cpu",
                             "ms_per_batch": round(1000 * seconds, 3), "cpu_threads": torch.get_num_threads()})
    return {"rows": rows, "cpu_reference": cpu_rows}


def write_generated_shards(folder: Path, count: int) -> list[str]:
    """Write ``count`` samples of 640x480 generated JPEGs with captions."""
    from PIL import Image

    from bench_common import generated_photo_batch
    from pgs_dali.shards import ShardWriter

    photos = (generated_photo_batch(32, 480, seed=3) * 255).round().to(torch.uint8)
    encoded = []
    for photo in photos:
        buffer = io.BytesIO()
        image = Image.fromarray(photo.permute(1, 2, 0).numpy()).resize((640, 480))
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    with ShardWriter(folder, samples_per_shard=500, prefix="gen-") as writer:
        for number in range(count):
            writer.write(f"{number:07d}", {"jpg": encoded[number % len(encoded)], "txt": f"photo {number}".encode()})
    return list(writer.paths)


def bench_loader(device: str, deadline: float) -> dict:
    """Measure loader throughput on the GPU when DALI and the baselines import."""
    try:
        import nvidia.dali  # noqa: F401
        import open_clip  # noqa: F401
        import webdataset  # noqa: F401
    except ImportError as error:
        return {"skipped": f"missing package: {error}"}
    from pgs_dali.cli.bench import BenchSettings, loader_rows, parse_case

    threads = min(16, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        shards = write_generated_shards(Path(folder), 8000)
        cases = [parse_case(text) for text in ("pgs_dali:none", "pgs_dali:pgs", "openclip_style:released")]
        rows = []
        for batch_size in (64, 256):
            if time.perf_counter() > deadline:
                rows.append({"skipped": f"batch {batch_size}: time budget spent"})
                continue
            settings = BenchSettings(
                shards=tuple(shards), batch_size=batch_size, image_size=224, threads=threads,
                device=device, batches=max(4, 2560 // batch_size), warmup=3,
            )
            rows += loader_rows(cases, settings, repeats=2)
    return {"rows": rows, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    from pgs_dali.cli.bench import hardware_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="output folder")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all sections (default: 540)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch; nothing to check", file=sys.stderr)
        return 2

    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict = {"hardware": hardware_info(), "date": time.strftime("%Y-%m-%d")}
    sections = (
        ("equality", lambda: check_equality("cuda"), 0.15),
        ("mask_op", lambda: bench_mask_op("cuda", began + 0.6 * args.budget), 0.6),
        ("loader", lambda: bench_loader("cuda", began + 0.95 * args.budget), 0.95),
    )
    for name, run_section, _ in sections:
        section_start = time.perf_counter()
        try:
            record[name] = run_section()
        except Exception as error:  # keep going: the other sections still report
            record[name] = {"error": repr(error), "traceback": traceback.format_exc()}
        record[name + "_seconds"] = round(time.perf_counter() - section_start, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: {record[name + '_seconds']} s", flush=True)

    equality = record.get("equality", {})
    print(f"equality passed: {equality.get('passed')}, total {time.perf_counter() - began:.0f} s")
    return 0 if equality.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
