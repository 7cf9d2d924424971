"""Draw the BENCHMARKS.md figures from the JSON records in benchmarks/results.

Usage: python benchmarks/plots.py

Each figure is drawn only when its JSON record exists:
loader_throughput_cpu.json -> loader_throughput.png,
mask_op_cpu.json -> mask_op.png, scaling_cpu.json -> scaling.png,
retention.json -> retention.png, memory_long_run.json -> memory.png.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench_common import RESULTS, read_result  # noqa: E402

COLORS = {
    "pgs": "tab:blue",
    "random": "tab:orange",
    "gaussian": "tab:green",
    "cluster": "tab:red",
    "grid": "tab:purple",
    "block": "tab:brown",
    "none": "tab:gray",
    "released": "black",
    "oracle": "lightgray",
}


def footer(record: dict) -> str:
    hardware = record["hardware"]
    return f"{record['date']}, {hardware['cpu']} ({hardware['cpu_cores']} cores), torch {hardware['torch']}, DALI {hardware['dali']}"


def plot_loader(record: dict) -> plt.Figure:
    rows = record["rows"]
    labels = [
        f"{row['loader']}\n{row['strategy']}" + (f"\n{row['torch_threads']} torch thread" if row.get("torch_threads") else "")
        for row in rows
    ]
    colors = ["tab:blue" if row["loader"] == "pgs_dali" else "tab:orange" for row in rows]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    axis.bar(range(len(rows)), [row["images_per_s"] for row in rows], color=colors)
    for index, row in enumerate(rows):
        axis.plot([index] * len(row["images_per_s_runs"]), row["images_per_s_runs"], "k.", markersize=4)
        axis.annotate(f"{row['images_per_s']:.0f}", (index, row["images_per_s"]), ha="center", va="bottom")
    axis.set_xticks(range(len(rows)), labels, fontsize=8)
    axis.set_ylabel("images / s (median; dots: rounds)")
    first = rows[0]
    axis.set_title(
        f"Loader throughput, batch {first['batch_size']}, {first['image_size']} px, "
        f"{first['threads']} threads/workers, {first['device']}"
    )
    figure.text(0.01, 0.01, footer(record), fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_mask_op(record: dict) -> plt.Figure:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, sweep, field, label in (
        (axes[0], "batch", "batch_size", "batch size (224 px)"),
        (axes[1], "size", "image_size", "image size in px (batch 64)"),
    ):
        series = defaultdict(list)
        for row in record["rows"]:
            if row["sweep"] == sweep:
                series[row["strategy"]].append((row[field], row["ms_per_batch"]))
        for strategy, points in series.items():
            points.sort()
            style = "--" if strategy == "released" else "-"
            name = "released-code style" if strategy == "released" else strategy
            axis.plot(*zip(*points), style, marker="o", color=COLORS[strategy], label=name)
        axis.set_xlabel(label)
        axis.set_ylabel("ms per batch (median)")
        axis.set_yscale("log")
        if sweep == "batch":
            axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Mask op alone on {record['rows'][0]['device']}")
    figure.text(0.01, 0.01, footer(record), fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_scaling(record: dict) -> plt.Figure:
    sweeps = (("batch", "batch_size", "batch size"), ("size", "image_size", "image size (px)"), ("threads", "threads", "DALI threads"))
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, (sweep, field, label) in zip(axes, sweeps):
        for strategy, threads, style in (("none", None, "-"), ("pgs", None, "-"), ("pgs", 1, "--")):
            points = sorted(
                (row[field], row["images_per_s"])
                for row in record["rows"]
                if row["sweep"] == sweep and row["strategy"] == strategy and row.get("torch_threads") == threads
            )
            name = f"pgs_dali:{strategy}" + (f", {threads} torch thread" if threads else "")
            if points:
                axis.plot(*zip(*points), style, marker="o", color=COLORS[strategy], label=name)
        axis.set_xlabel(label)
        axis.set_ylabel("images / s (median)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("pgs_dali loader scaling (others fixed at batch 64, 224 px, all cores)")
    figure.text(0.01, 0.01, footer(record), fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_retention(record: dict) -> plt.Figure:
    rows = record["rows"]
    ratios = sorted({row["mask_ratio"] for row in rows if row["strategy"] != "grid"})
    strategies = list(dict.fromkeys(row["strategy"] for row in rows))
    width = 0.8 / len(strategies)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for offset, strategy in enumerate(strategies):
        for row in rows:
            if row["strategy"] != strategy or row["mask_ratio"] not in ratios:
                continue
            x = ratios.index(row["mask_ratio"]) + (offset - len(strategies) / 2 + 0.5) * width
            hatch = "//" if strategy == "oracle" else None
            axis.bar(x, row["retention"], width, color=COLORS[strategy], hatch=hatch, edgecolor="black", linewidth=0.3)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=COLORS[s], hatch="//" if s == "oracle" else None)
        for s in strategies
    ]
    names = ["oracle (upper bound, reads the masks)" if s == "oracle" else s for s in strategies]
    axis.legend(handles, names, fontsize=8, ncol=4, loc="upper right")
    axis.set_xticks(range(len(ratios)), [f"mask ratio {r:g}" for r in ratios])
    axis.set_ylabel("object retention (mean over photos and seeds)")
    axis.set_ylim(0, 1.2)
    axis.grid(axis="y", alpha=0.3)
    axis.set_title(f"Object retention on coco-mini ({record['photos']} photos, {rows[0]['seeds']} seeds, {record['image_size']} px)")
    figure.text(0.01, 0.01, footer(record), fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_memory(record: dict) -> plt.Figure:
    batches, _, rss = zip(*record["rss_trace"])
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.plot(batches, rss, marker=".")
    axis.axvline(record["warmup_batches"], color="gray", linestyle=":", label="end of warm-up")
    axis.set_xlabel("batches")
    axis.set_ylabel("RSS (MiB)")
    axis.set_title(
        f"Loader RSS over {record['batches']} batches (batch {record['batch_size']}, {record['image_size']} px): "
        f"{record['growth_after_warmup_percent']:+.2f}% after warm-up"
    )
    axis.legend(fontsize=8)
    figure.text(0.01, 0.01, footer(record), fontsize=7)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


FIGURES = (
    ("loader_throughput_cpu", "loader_throughput.png", plot_loader),
    ("mask_op_cpu", "mask_op.png", plot_mask_op),
    ("scaling_cpu", "scaling.png", plot_scaling),
    ("retention", "retention.png", plot_retention),
    ("memory_long_run", "memory.png", plot_memory),
)


def main() -> int:
    for record_name, image_name, draw in FIGURES:
        if not (RESULTS / f"{record_name}.json").is_file():
            print(f"skip {image_name}: no {record_name}.json")
            continue
        figure = draw(read_result(record_name))
        figure.savefig(RESULTS / image_name, dpi=110)
        plt.close(figure)
        print(f"wrote {RESULTS / image_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
