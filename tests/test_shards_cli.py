"""Tests for make-shards, verify and the `index` and `make-shards` commands."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shards_helpers import make_folder_read_only

from pgs_dali.cli import shards as shards_cli
from pgs_dali.shards import index as index_module
from pgs_dali.shards.index import default_index_path, ensure_index, read_index
from pgs_dali.shards.verify import check_caption, verify_shards
from pgs_dali.shards.writer import ShardWriter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO = DATA / "coco-mini"

needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason="coco-mini data is absent")


def _image(image_format: str = "JPEG", seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if image_format == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pgs-dali")
    shards_cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def _members(shard: str) -> dict[str, bytes]:
    with tarfile.open(shard) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    files = {
        "a.jpg": _image("JPEG", 1),
        "sub/b.PNG": _image("PNG", 2),
        "c.jpeg": _image("JPEG", 3),
        "misnamed.png": _image("JPEG", 4),
        "anim.gif": _image("GIF", 5),
        "cut.jpg": _image("JPEG", 6)[:-50],
        "d.webp": _image("WEBP", 7),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


def test_make_shards_from_csv(tmp_path, image_folder, capsys):
    folder, files = image_folder
    table = folder / "pairs.csv"
    table.write_text(
        "filepath,title,source\n"
        "a.jpg,a red square,web\n"
        "sub/b.PNG,\"a caption, with a comma\",web\n"
        "c.jpeg,third,web\n"
        "misnamed.png,jpeg bytes,web\n"
        "anim.gif,a gif,web\n"
        "cut.jpg,truncated,web\n"
        "gone.jpg,missing file,web\n"
        "d.webp,  ,web\n"
        ",no image,web\n",
        encoding="utf-8",
    )

    status = _cli("make-shards", "--output", str(tmp_path / "out"), "--csv", str(table), "--samples-per-shard", "2")

    assert status == 0
    output = capsys.readouterr().out
    assert "Wrote 4 samples into 2 shard(s)." in output
    assert "Skipped 5 sample(s)" in output
    for reason in ("missing image file: 1", "truncated: 1", "unsupported image format: 1",
                   "empty caption: 1", "missing image path: 1"):
        assert reason in output
    first = _members(str(tmp_path / "out" / "shard-000000.tar"))
    second = _members(str(tmp_path / "out" / "shard-000001.tar"))
    assert first["000000000.jpg"] == files["a.jpg"]
    assert first["000000001.png"] == files["sub/b.PNG"]
    assert first["000000001.txt"] == b"a caption, with a comma"
    assert second["000000002.jpeg"] == files["c.jpeg"]
    assert second["000000003.jpg"] == files["misnamed.png"]
    metadata = json.loads(first["000000000.json"])
    assert metadata == {"row": 0, "filepath": "a.jpg", "title": "a red square", "source": "web"}


def test_make_shards_tsv_and_custom_columns(tmp_path, image_folder, capsys):
    folder, _ = image_folder
    (folder / "pairs.tsv").write_text("caption\tpath\na tab, separated\ta.jpg\n", encoding="utf-8")
    (folder / "pairs.txt").write_text("caption|path\npiped\tcaption|c.jpeg\n", encoding="utf-8")

    assert _cli("make-shards", "--output", str(tmp_path / "tsv"), "--csv", str(folder / "pairs.tsv"),
                "--csv-img-key", "path", "--csv-caption-key", "caption") == 0
    assert _cli("make-shards", "--output", str(tmp_path / "pipe"), "--csv", str(folder / "pairs.txt"),
                "--csv-img-key", "path", "--csv-caption-key", "caption", "--csv-separator", "|") == 0

    assert _members(str(tmp_path / "tsv" / "shard-000000.tar"))["000000000.txt"] == b"a tab, separated"
    assert _members(str(tmp_path / "pipe" / "shard-000000.tar"))["000000000.txt"] == b"piped\tcaption"


def test_make_shards_reports_bad_column(tmp_path, image_folder, capsys):
    folder, _ = image_folder
    (folder / "pairs.csv").write_text("file,caption\na.jpg,x\n", encoding="utf-8")

    status = _cli("make-shards", "--output", str(tmp_path / "out"), "--csv", str(folder / "pairs.csv"))

    assert status == 2
    error = capsys.readouterr().err
    assert "column 'filepath' not found" in error
    assert "['file', 'caption']" in error
    assert "--csv-img-key" in error


def test_make_shards_argument_errors(tmp_path, capsys):
    assert _cli("make-shards", "--output", str(tmp_path)) == 2
    assert "exactly one source" in capsys.readouterr().err
    assert _cli("make-shards", "--output", str(tmp_path), "--coco-captions", "x.json") == 2
    assert "needs --images" in capsys.readouterr().err
    assert _cli("make-shards", "--output", str(tmp_path), "--csv", "x.csv", "--samples-per-shard", "0") == 2
    assert "at least 1" in capsys.readouterr().err
    assert _cli("make-shards", "--output", str(tmp_path), "--csv", str(tmp_path / "none.csv")) == 2
    assert "none.csv" in capsys.readouterr().err


def test_make_shards_refuses_existing_shards(tmp_path, image_folder, capsys):
    folder, _ = image_folder
    (folder / "one.csv").write_text("filepath,title\na.jpg,one\nc.jpeg,two\n", encoding="utf-8")
    (folder / "two.csv").write_text("filepath,title\na.jpg,only\n", encoding="utf-8")
    output = tmp_path / "out"
    assert _cli("make-shards", "--output", str(output), "--csv", str(folder / "one.csv"), "--samples-per-shard", "1") == 0

    assert _cli("make-shards", "--output", str(output), "--csv", str(folder / "two.csv")) == 2
    assert "--overwrite" in capsys.readouterr().err

    assert _cli("make-shards", "--output", str(output), "--csv", str(folder / "two.csv"), "--overwrite") == 0
    assert sorted(p.name for p in output.iterdir()) == ["shard-000000.idx", "shard-000000.idx.json", "shard-000000.tar"]


def _write_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "coco" / "images"
    images.mkdir(parents=True)
    for image_id in (7, 12):
        (images / f"{image_id:012d}.jpg").write_bytes(_image("JPEG", image_id))
    captions = {
        "images": [
            {"id": 12, "file_name": "000000000012.jpg", "width": 32, "height": 24},
            {"id": 7, "file_name": "000000000007.jpg", "width": 32, "height": 24},
            {"id": 99, "file_name": "000000000099.jpg", "width": 32, "height": 24},
            {"id": 5, "file_name": "000000000005.jpg", "width": 32, "height": 24},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "caption": "A cat on a mat. "},
            {"id": 2, "image_id": 12, "caption": "A dog."},
            {"id": 3, "image_id": 7, "caption": "A second caption."},
            {"id": 4, "image_id": 99, "caption": "Image file is missing."},
        ],
    }
    path = tmp_path / "coco" / "captions.json"
    path.write_text(json.dumps(captions), encoding="utf-8")
    return path, images


def test_make_shards_from_coco(tmp_path, capsys):
    captions, images = _write_coco(tmp_path)

    status = _cli("make-shards", "--output", str(tmp_path / "out"), "--coco-captions", str(captions),
                  "--images", str(images))

    assert status == 0
    output = capsys.readouterr().out
    assert "Wrote 2 samples" in output
    assert "missing image file: 1" in output
    assert "missing caption: 1" in output
    members = _members(str(tmp_path / "out" / "shard-000000.tar"))
    assert list(members) == [
        "000000000007.jpg", "000000000007.json", "000000000007.txt",
        "000000000012.jpg", "000000000012.json", "000000000012.txt",
    ]
    assert members["000000000007.txt"] == b"A cat on a mat."
    assert json.loads(members["000000000007.json"]) == {
        "image_id": 7, "file_name": "000000000007.jpg", "width": 32, "height": 24,
        "captions": ["A cat on a mat.", "A second caption."],
    }


def test_make_shards_rejects_instances_file(tmp_path, capsys):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]}))

    assert _cli("make-shards", "--output", str(tmp_path / "out"), "--coco-captions", str(path),
                "--images", str(tmp_path)) == 2
    assert "not an instances file" in capsys.readouterr().err


@needs_coco
@pytest.mark.slow
def test_coco_mini_shards_read_by_dali(tmp_path, capsys):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    captions_path = COCO / "annotations" / "captions_train2017.json"
    status = _cli("make-shards", "--output", str(tmp_path), "--coco-captions", str(captions_path),
                  "--images", str(COCO / "images"), "--samples-per-shard", "32")
    assert status == 0
    assert "Wrote 80 samples into 3 shard(s)." in capsys.readouterr().out

    coco = json.loads(captions_path.read_text(encoding="utf-8"))
    expected: dict[str, list[str]] = {}
    for annotation in coco["annotations"]:
        expected.setdefault(f"{annotation['image_id']:012d}", []).append(annotation["caption"].strip())
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    members = {}
    for shard in shards:
        members.update(_members(shard))
    for key, captions in expected.items():
        assert members[f"{key}.txt"].decode() == captions[0]
        assert json.loads(members[f"{key}.json"])["captions"] == captions
        assert members[f"{key}.jpg"] == (COCO / "images" / f"{key}.jpg").read_bytes()

    index_paths = [str(default_index_path(shard)) for shard in shards]
    assert sum(len(read_index(path)) for path in index_paths) == 80

    @dali.pipeline_def(batch_size=16, num_threads=1, device_id=None)
    def pipeline():
        image, caption = fn.readers.webdataset(
            paths=shards, index_paths=index_paths, ext=["jpg", "txt"], name="reader",
            missing_component_behavior="error",
        )
        return fn.decoders.image(image, device="cpu"), caption

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == 80
    seen = set()
    for _ in range(5):
        images, texts = pipe.run()
        for i in range(16):
            seen.add(bytes(np.asarray(texts[i])).decode())
            assert np.asarray(images[i]).ndim == 3
    assert seen == {captions[0] for captions in expected.values()}


def _bad_shard(folder: Path) -> str:
    with ShardWriter(folder, samples_per_shard=100) as writer:
        writer.write("good", {"jpg": _image("JPEG", 1), "txt": "fine"})
        writer.write("long", {"jpg": _image("JPEG", 2), "txt": "word " * 5000})
        writer.write("bigger", {"png": _image("PNG", 3, size=(64, 64)), "txt": "64 x 64"})
        writer.write("cut", {"jpg": _image("JPEG", 4)[:-30], "txt": "truncated"})
        writer.write("empty", {"jpg": _image("JPEG", 5), "txt": ""})
        writer.write("spaces", {"jpg": _image("JPEG", 6), "txt": " \n\t "})
        writer.write("latin1", {"jpg": _image("JPEG", 7), "txt": "caf\u00e9".encode("latin-1")})
        writer.write("noimage", {"txt": "caption only"})
        writer.write("notimage", {"jpg": b"<html>not found</html>", "txt": "html"})
    return writer.paths[0]


def test_check_caption():
    assert check_caption(b"ok") is None
    assert check_caption(("x" * 100_000).encode()) is None
    assert check_caption(b"") == "empty caption"
    assert check_caption(b"   \n") == "empty caption"
    assert check_caption(b"\xe9t\xe9") == "caption not valid UTF-8"


def test_verify_leaves_bad_samples_out(tmp_path):
    shard = _bad_shard(tmp_path)

    report = verify_shards([shard], max_pixels=40 * 40)

    result = report.results[0]
    assert result.verified
    assert {item.key: item.reason for item in result.excluded} == {
        "noimage": "missing image",
        "bigger": "too many pixels (64 x 64 > 1600)",
        "cut": "truncated",
        "empty": "empty caption",
        "spaces": "empty caption",
        "latin1": "caption not valid UTF-8",
        "notimage": "unknown image format",
    }
    assert [s.key for s in read_index(result.index_path)] == ["good", "long"]
    assert report.totals_by_reason() == {
        "empty caption": 2, "caption not valid UTF-8": 1, "missing image": 1,
        "too many pixels": 1, "truncated": 1, "unknown image format": 1,
    }

    # The loader's ensure_index reuses the verified index and its statistics.
    _, reused = ensure_index(shard)
    assert reused.verified
    assert reused.num_samples == 2
    assert reused.counts_by_reason()["empty caption"] == 2


def test_verify_parallel_keeps_order(tmp_path):
    shards = []
    for i in range(3):
        with ShardWriter(tmp_path / f"part{i}", samples_per_shard=10) as writer:
            for j in range(i + 1):
                writer.write(f"s{j}", {"jpg": _image("JPEG", j), "txt": f"caption {j}"})
        shards += writer.paths
    done = []

    report = verify_shards(shards, workers=3, on_done=done.append)

    assert [r.shard for r in report.results] == shards
    assert [r.num_samples for r in report.results] == [1, 2, 3]
    assert len(done) == 3
    with pytest.raises(ValueError, match="workers"):
        verify_shards(shards, workers=0)


def test_index_command_verify_writes_report(tmp_path, capsys):
    shard = _bad_shard(tmp_path / "shards")

    status = _cli("index", "--verify", shard, "--max-pixels", "0", "--workers", "1")

    assert status == 0
    output = capsys.readouterr().out
    assert "Verified 1 shard(s): 3 samples kept, 6 item(s) left out." in output
    assert "pixel limit: none" in output
    report_path = tmp_path / "shards" / "verify-report.json"
    report = json.loads(report_path.read_text())
    assert report["samples_kept"] == 3
    assert report["totals_by_reason"]["empty caption"] == 2
    assert {"key": "cut", "reason": "truncated"} in report["shards"][0]["excluded"]
    text = report_path.with_suffix(".txt").read_text()
    assert "'latin1': caption not valid UTF-8" in text


def test_index_command_builds_and_reuses(tmp_path, capsys, monkeypatch):
    with ShardWriter(tmp_path / "shards", samples_per_shard=1) as writer:
        writer.write("a", {"jpg": _image("JPEG", 1), "txt": "one"})
        writer.write("b", {"jpg": _image("JPEG", 2)})
    for shard in writer.paths:
        default_index_path(shard).unlink()

    status = _cli("index", str(tmp_path / "shards" / "*.tar"), "--report", str(tmp_path / "index.json"))

    assert status == 0
    assert "Indexed 2 shard(s): 1 samples kept, 1 item(s) left out." in capsys.readouterr().out
    report = json.loads((tmp_path / "index.json").read_text())
    assert report["verified"] is False
    assert report["totals_by_reason"] == {"missing caption": 1}
    assert (tmp_path / "index.txt").is_file()

    monkeypatch.setattr(index_module, "build_index", lambda *a, **k: pytest.fail("index was rebuilt"))
    assert _cli("index", *writer.paths) == 0
    assert "1 samples kept" in capsys.readouterr().out
    assert _cli("index", writer.paths[1]) == 1  # a shard without usable samples
    assert "0 samples kept" in capsys.readouterr().out


def test_index_command_cache_dir(tmp_path, capsys, monkeypatch):
    with ShardWriter(tmp_path / "shards") as writer:
        writer.write("a", {"jpg": _image("JPEG", 1), "txt": "one"})
    shard_dir = tmp_path / "shards"
    for path in shard_dir.glob("*.idx*"):
        path.unlink()
    make_folder_read_only(monkeypatch, shard_dir)
    status = _cli("index", "--verify", writer.paths[0], "--cache-dir", str(tmp_path / "cache"))

    assert status == 0
    assert list((tmp_path / "cache").glob("shard-000000-*.idx"))
    assert (tmp_path / "cache" / "verify-report.json").is_file()
    assert "1 samples kept" in capsys.readouterr().out


def test_index_command_errors(tmp_path, capsys):
    assert _cli("index", str(tmp_path / "*.tar")) == 2
    assert "no shard matches" in capsys.readouterr().err
    assert _cli("index", "--max-pixels", "-1", str(tmp_path)) == 2
    assert "--max-pixels" in capsys.readouterr().err


def test_entry_point_runs_index(tmp_path, capsys):
    from pgs_dali.cli import main

    with ShardWriter(tmp_path) as writer:
        writer.write("a", {"jpg": _image("JPEG", 1), "txt": "one"})

    assert main(["index", "--force", writer.paths[0]]) == 0
    assert "Indexed 1 shard(s): 1 samples kept" in capsys.readouterr().out
