"""Tests for ``pgs-dali bench`` and its measurement helpers."""

from __future__ import annotations

import json

import pytest

from pgs_dali.cli import main
from pgs_dali.cli.bench import (
    BenchSettings,
    LoaderCase,
    format_loader_rows,
    interleaved_runs,
    measure_loader,
    parse_case,
)

from loader_helpers import fast_tokenizer, write_generated_shards


class TestParseCase:
    def test_valid(self):
        assert parse_case("openclip_style:released") == LoaderCase("openclip_style", "released")
        assert parse_case(" pgs_dali:none ").label == "pgs_dali:none"

    def test_torch_threads_suffix(self):
        case = parse_case("pgs_dali:pgs@1")
        assert case == LoaderCase("pgs_dali", "pgs", torch_threads=1)
        assert case.label == "pgs_dali:pgs@1"

    @pytest.mark.parametrize(
        "text, message",
        [
            ("pgs_dali", "LOADER:STRATEGY"),
            ("timm:pgs", "LOADER:STRATEGY"),
            ("pgs_dali:released", "'pgs_dali:released'"),
            ("openclip_style:magic", "'openclip_style:magic'"),
            ("pgs_dali:pgs@0", "integer >= 1"),
            ("pgs_dali:pgs@two", "integer >= 1"),
        ],
    )
    def test_invalid(self, text, message):
        with pytest.raises(ValueError, match=message):
            parse_case(text)


class TestInterleavedRuns:
    def test_alternates_order(self):
        order = []
        runs = interleaved_runs(["a", "b", "c"], lambda label: order.append(label) or label, 3)
        assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
        assert runs == {"a": ["a"] * 3, "b": ["b"] * 3, "c": ["c"] * 3}

    def test_rejects_zero_repeats(self):
        with pytest.raises(ValueError, match="repeats"):
            interleaved_runs(["a"], lambda label: 0, 0)


def test_target_ratios_of_loader_rows():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_loader import ratios

    rows = [
        {"loader": "pgs_dali", "strategy": "none", "images_per_s": 200.0},
        {"loader": "pgs_dali", "strategy": "pgs", "images_per_s": 170.0},
        {"loader": "pgs_dali", "strategy": "pgs", "torch_threads": 1, "images_per_s": 190.0},
        {"loader": "openclip_style", "strategy": "released", "images_per_s": 100.0},
    ]
    got = ratios(rows)
    assert got["pgs_cost"] == pytest.approx(0.15)
    assert got["pgs_cost_torch_threads_1"] == pytest.approx(0.05)
    assert got["pgs_dali_over_openclip"] == pytest.approx(1.7)
    assert "pgs_dali_over_openclip_no_mask" not in got


def test_format_ratios_against_first_row():
    rows = [
        {"loader": "pgs_dali", "strategy": "none", "images_per_s": 200.0, "images_per_s_runs": [200.0],
         "startup_s": 1.0, "batch_size": 8, "image_size": 64, "threads": 2, "device": "cpu",
         "mask_ratio": 0.0, "batches": 2, "repeats": 1},
        {"loader": "pgs_dali", "strategy": "pgs", "images_per_s": 150.0, "images_per_s_runs": [150.0],
         "startup_s": 1.0, "batch_size": 8, "image_size": 64, "threads": 2, "device": "cpu",
         "mask_ratio": 0.5, "batches": 2, "repeats": 1},
    ]
    text = format_loader_rows(rows)
    assert "1.000x" in text
    assert "0.750x" in text
    assert "mask ratio 0.5" in text


@pytest.mark.slow
class TestMeasureLoader:
    @pytest.mark.parametrize(
        "case",
        [LoaderCase("pgs_dali", "pgs"), LoaderCase("openclip_style", "released"), LoaderCase("pgs_dali", "random", 1)],
    )
    def test_counts_timed_images(self, tmp_path, case):
        import torch

        threads_before = torch.get_num_threads()
        shards = write_generated_shards(tmp_path, num_shards=2, per_shard=8)
        settings = BenchSettings(
            shards=tuple(shards), batch_size=4, image_size=32, threads=2,
            batches=2, warmup=1, tokenizer=fast_tokenizer,
        )
        result = measure_loader(case, settings)
        assert result.images == 8
        assert result.images_per_s > 0
        assert result.startup_s > 0
        assert torch.get_num_threads() == threads_before

    def test_too_few_samples(self, tmp_path):
        shards = write_generated_shards(tmp_path, num_shards=1, per_shard=4)
        settings = BenchSettings(
            shards=tuple(shards), batch_size=4, image_size=32, threads=1,
            batches=3, warmup=1, tokenizer=fast_tokenizer,
        )
        with pytest.raises(ValueError, match="ran out"):
            measure_loader(LoaderCase("pgs_dali", "none"), settings)


@pytest.mark.slow
def test_cli_json_rows(tmp_path, capsys):
    write_generated_shards(tmp_path, num_shards=2, per_shard=8)
    status = main(
        [
            "bench", "--data", str(tmp_path / "*.tar"),
            "--cases", "pgs_dali:random,openclip_style:none",
            "--batch-size", "4", "--image-size", "32", "--threads", "2",
            "--batches", "2", "--warmup", "1", "--repeats", "2", "--json",
        ]
    )
    assert status == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["loader"], row["strategy"]) for row in rows] == [
        ("pgs_dali", "random"),
        ("openclip_style", "none"),
    ]
    for row in rows:
        assert row["images_per_s"] > 0
        assert len(row["images_per_s_runs"]) == 2
        assert row["batch_size"] == 4
        assert row["device"] == "cpu"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cases", "nope:pgs"], "LOADER:STRATEGY"),
        (["--batches", "0"], "--batches"),
        (["--warmup", "-1"], "--warmup"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, extra, message):
    assert main(["bench", "--data", str(tmp_path / "*.tar"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_no_shards(tmp_path, capsys):
    assert main(["bench", "--data", str(tmp_path / "*.tar")]) == 2
    assert "pgs-dali bench:" in capsys.readouterr().err
