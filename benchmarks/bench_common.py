"""Helpers shared by the benchmark scripts: photo batches and result files."""

from __future__ import annotations

import datetime
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"


def coco_photo_batch(batch_size: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Return (B, 3, S, S) float32 crops of coco-mini photos in [0, 1] and their keys.

    The 80 photos are cropped like the loader does and repeated to fill the
    batch; repeated photos get distinct keys, so their masks differ. Without
    coco-mini (e.g. on a machine that has only the repository), generated
    photo-like images are used instead.
    """
    from pgs_dali.retention import prepare_views

    if not COCO_MINI.is_dir():
        return generated_photo_batch(batch_size, image_size, seed), [f"gen-{i}" for i in range(batch_size)]
    samples = _coco_samples()
    views = prepare_views(samples, seed, image_size)
    repeats = -(-batch_size // len(samples))
    images = views.images.repeat(repeats, 1, 1, 1)[:batch_size].contiguous()
    keys = [f"{key}-{copy}" for copy in range(repeats) for key in views.keys][:batch_size]
    return images, keys


def generated_photo_batch(batch_size: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Return (B, 3, S, S) float32 images in [0, 1]: smooth gradients, texture and a few boxes."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, image_size)
    base = torch.rand(batch_size, 3, 1, 1, generator=generator)
    images = 0.5 * base + 0.3 * ramp.view(1, 1, 1, -1) * torch.rand(batch_size, 3, 1, 1, generator=generator)
    images = images + 0.05 * torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    for index in range(batch_size):
        for _ in range(3):
            top, left = torch.randint(0, image_size // 2, (2,), generator=generator).tolist()
            height, width = torch.randint(image_size // 8, image_size // 2, (2,), generator=generator).tolist()
            images[index, :, top : top + height, left : left + width] = torch.rand(3, 1, 1, generator=generator)
    return images.clamp(0, 1).contiguous()


_SAMPLES: list = []


def _coco_samples() -> list:
    from pgs_dali.retention import load_coco_foreground

    if not _SAMPLES:
        _SAMPLES.extend(
            load_coco_foreground(COCO_MINI / "images", COCO_MINI / "annotations" / "instances_train2017.json")
        )
    return _SAMPLES


def time_call(function: Callable[[], Any], min_seconds: float = 0.3, max_calls: int = 50) -> tuple[float, float]:
    """Time one call: median wall and process CPU seconds over >= 3 calls or ``min_seconds``.

    One untimed call first takes lazy imports and allocator warm-up out of
    the measurement. The CPU time sums all threads of this process, so on a
    machine shared with other jobs it is the steadier of the two numbers.
    """
    function()
    wall_times, cpu_times = [], []
    start = time.perf_counter()
    while len(wall_times) < 3 or (time.perf_counter() - start < min_seconds and len(wall_times) < max_calls):
        wall_begin, cpu_begin = time.perf_counter(), time.process_time()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_times.append(time.perf_counter() - wall_begin)
        cpu_times.append(time.process_time() - cpu_begin)
    return statistics.median(wall_times), statistics.median(cpu_times)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus hardware and date to benchmarks/results/<name>.json."""
    from pgs_dali.cli.bench import hardware_info

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "date": datetime.date.today().isoformat(),
        "hardware": hardware_info(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_result(name: str) -> dict[str, Any]:
    """Read benchmarks/results/<name>.json."""
    return json.loads((RESULTS / f"{name}.json").read_text())
