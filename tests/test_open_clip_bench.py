"""Smoke test of benchmarks/bench_train_step.py on a tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_rows_and_json(tmp_path, capsys):
    bench = load_bench()
    output = tmp_path / "result.json"
    options = ["--image-size", "64", "--width", "64", "--layers", "1", "--batch-size", "4"]
    threads = torch.get_num_threads()
    try:
        status = bench.main([*options, "--repeats", "2", "--steps", "1", "--threads", "1", "--json", str(output)])
    finally:
        torch.set_num_threads(threads)
    assert status == 0

    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["ratio", "tokens"]
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert [row["mask_ratio"] for row in rows] == [0.0, 0.3, 0.5]
    # 64 px, 16 px patches: N = 16; 0.3 masks round(4.8) = 5, 0.5 masks 8.
    assert [row["vision_tokens"] for row in rows] == [17, 12, 9]
    assert rows[0]["step_vs_ratio_0"] == 1.0
    for row in rows:
        assert 0 < row["vision_share"] < 1.5
        assert row["step_min_ms"] <= row["step_ms"]
    assert result["hardware"]["torch_threads"] == 1


def test_bench_rejects_zero_repeats():
    with pytest.raises(SystemExit):
        load_bench().parse_args(["--repeats", "0"])
