"""Tests for shard index files: scanning, grouping, reuse and DALI reading."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shards_helpers import make_folder_read_only

from pgs_dali.shards import index as index_module
from pgs_dali.shards.index import (
    NON_SAMPLE_REASONS,
    build_index,
    cached_index_path,
    default_index_path,
    ensure_index,
    normalize_extensions,
    read_index,
    sidecar_path,
)


def _jpeg(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """Write a tar; a None content makes a directory entry."""
    with tarfile.open(path, "w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


def _keys(result) -> list[str]:
    return [sample.key for sample in result.samples]


def _reasons(result) -> dict[str, str]:
    return {item.key: item.reason for item in result.excluded}


def test_offsets_point_at_member_data(tmp_path):
    contents = {"a.jpg": _jpeg(1), "a.txt": b"first", "b.jpg": _jpeg(2), "b.txt": b"second"}
    shard = _write_tar(tmp_path / "s.tar", list(contents.items()))

    result = build_index(shard)

    assert _keys(result) == ["a", "b"]
    data = shard.read_bytes()
    for sample in result.samples:
        for component in sample.components:
            stored = data[component.offset : component.offset + component.size]
            assert stored == contents[component.name]


def test_truncated_last_member_keeps_complete_ones(tmp_path):
    shard = _write_tar(
        tmp_path / "s.tar",
        [("a.jpg", _jpeg(1)), ("a.txt", b"one"), ("b.jpg", _jpeg(2)), ("b.txt", b"two"),
         ("c.txt", b"three"), ("c.jpg", _jpeg(3))],
    )
    complete = build_index(shard)
    last = complete.samples[-1].component("jpg")
    # Cut the file 100 bytes into the data of the last member, c.jpg.
    shard.write_bytes(shard.read_bytes()[: last.offset + 100])

    result = build_index(shard)

    assert _keys(result) == ["a", "b"]
    assert result.truncated_member == "c.jpg"
    assert _reasons(result) == {"c.jpg": "truncated tar member", "c": "missing image"}


def test_truncated_header_keeps_earlier_members(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"one"), ("b.jpg", _jpeg(2))])
    second_header = build_index(shard).samples[0].component("txt").offset + 512
    shard.write_bytes(shard.read_bytes()[: second_header + 100])  # inside b.jpg's header

    result = build_index(shard)

    assert _keys(result) == ["a"]
    assert result.tar_error is not None
    assert any(reason.startswith("tar read error") for reason in _reasons(result).values())


@pytest.mark.parametrize("layout", ["zero bytes", "empty archive"])
def test_empty_tar_gives_zero_samples(tmp_path, layout):
    shard = tmp_path / "empty.tar"
    if layout == "zero bytes":
        shard.write_bytes(b"")
    else:
        _write_tar(shard, [])

    index_path, result = ensure_index(shard)

    assert result.num_samples == 0
    assert result.excluded == []
    assert result.tar_error is None
    assert Path(index_path).read_text() == "v1.2 0\n"


def test_dotted_keys_group_by_last_dot(tmp_path):
    shard = _write_tar(
        tmp_path / "s.tar",
        [
            ("img.001.jpg", _jpeg(1)), ("img.001.txt", b"one"), ("img.001.json", b"{}"),
            ("img.002.jpg", _jpeg(2)), ("img.002.txt", b"two"),
            ("dir.v2/photo.x.y.png", _jpeg(3)), ("dir.v2/photo.x.y.txt", b"three"),
        ],
    )

    result = build_index(shard)

    assert _keys(result) == ["img.001", "img.002", "dir.v2/photo.x.y"]
    first = result.samples[0]
    assert [c.extension for c in first.components] == ["jpg", "txt", "json"]
    assert result.excluded == []


def test_dotted_extra_component_stays_with_sample(tmp_path):
    # a.seg.png is a second image of sample "a" (a mask), not a sample "a.seg".
    shard = _write_tar(
        tmp_path / "s.tar",
        [("a.jpg", _jpeg(1)), ("a.seg.png", _jpeg(2)), ("a.txt", b"one")],
    )

    result = build_index(shard)

    assert _keys(result) == ["a"]
    assert [c.extension for c in result.samples[0].components] == ["jpg", "seg.png", "txt"]
    assert result.samples[0].component("jpg;jpeg;png;webp").name == "a.jpg"


def test_upper_case_extensions_written_lower(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("Photo.JPG", _jpeg(1)), ("Photo.TXT", b"upper"), ("x.Jpeg", _jpeg(2)), ("x.txt", b"mixed")])

    index_path, result = ensure_index(shard)

    assert _keys(result) == ["Photo", "x"]
    lines = Path(index_path).read_text().splitlines()
    assert lines[1].split()[0::4] == ["jpg", "txt"]
    assert lines[1].split()[3::4] == ["Photo.JPG", "Photo.TXT"]
    assert lines[2].split()[0::4] == ["jpeg", "txt"]


def test_stray_files_are_counted(tmp_path):
    shard = _write_tar(
        tmp_path / "s.tar",
        [
            ("data", None),
            ("data/a.jpg", _jpeg(1)), ("data/a.txt", b"one"),
            ("__MACOSX/data/._a.jpg", b"resource fork"),
            ("data/.DS_Store", b"finder"),
            ("data/._b.jpg", b"apple double"),
            ("README", b"no extension"),
            ("data/my photo.jpg", _jpeg(2)),
        ],
    )

    result = build_index(shard)

    assert _keys(result) == ["data/a"]
    assert _reasons(result) == {
        "data": "stray file",
        "__MACOSX/data/._a.jpg": "stray file",
        "data/.DS_Store": "stray file",
        "data/._b.jpg": "stray file",
        "README": "stray file",
        "data/my photo.jpg": "whitespace in name",
    }
    assert result.counts_by_reason() == {"stray file": 5, "whitespace in name": 1}


def test_missing_components_are_excluded(tmp_path):
    shard = _write_tar(
        tmp_path / "s.tar",
        [("a.jpg", _jpeg(1)), ("a.txt", b"ok"), ("b.jpg", _jpeg(2)), ("c.txt", b"no image"), ("d.json", b"{}")],
    )

    result = build_index(shard)

    assert _keys(result) == ["a"]
    assert _reasons(result) == {"b": "missing caption", "c": "missing image", "d": "missing image"}
    assert {item.shard for item in result.excluded} == {os.fspath(shard)}


def test_duplicate_component_keeps_first(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.png", _jpeg(2)), ("a.txt", b"x")])

    result = build_index(shard)

    assert [c.name for c in result.samples[0].components] == ["a.jpg", "a.txt"]
    assert _reasons(result) == {"a.png": "duplicate component"}
    assert "duplicate component" in NON_SAMPLE_REASONS


def test_custom_extensions(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.png", _jpeg(1)), ("a.cls", b"3"), ("b.png", _jpeg(2))])

    result = build_index(shard, extensions=["PNG", "cls"])

    assert result.extensions == ("png", "cls")
    assert _keys(result) == ["a"]
    assert _reasons(result) == {"b": "missing cls"}


def test_ensure_index_reuses_sidecar(tmp_path, monkeypatch):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x"), ("b.jpg", _jpeg(2))])
    index_path, built = ensure_index(shard)
    assert index_path == os.fspath(default_index_path(shard))
    assert json.loads(sidecar_path(index_path).read_text())["excluded"] == [{"key": "b", "reason": "missing caption"}]

    def fail(*args, **kwargs):
        raise AssertionError("the index should have been reused")

    monkeypatch.setattr(index_module, "build_index", fail)
    reused_path, reused = ensure_index(shard)

    assert reused_path == index_path
    assert reused.samples is None
    assert reused.num_samples == built.num_samples == 1
    assert reused.counts_by_reason() == {"missing caption": 1}
    assert reused.stats_known


def test_ensure_index_rebuilds_changed_shard(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x")])
    ensure_index(shard)
    _write_tar(shard, [("a.jpg", _jpeg(1)), ("a.txt", b"x"), ("b.jpg", _jpeg(2)), ("b.txt", b"y")])
    os.utime(shard, ns=(1, 1))  # a different mtime than the sidecar records

    _, result = ensure_index(shard)

    assert result.num_samples == 2
    assert result.samples is not None


def test_ensure_index_rebuilds_for_other_extensions(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x"), ("a.cls", b"1")])
    ensure_index(shard)

    _, result = ensure_index(shard, extensions=["jpg", "cls"])

    assert result.samples is not None
    assert result.extensions == ("jpg", "cls")


def test_ensure_index_accepts_newer_foreign_index(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x")])
    foreign = default_index_path(shard)
    foreign.write_text("v1.2 1\njpg 512 100 a.jpg txt 2048 1 a.txt\n")
    os.utime(shard, ns=(10**18, 10**18))
    os.utime(foreign, ns=(10**18 + 1, 10**18 + 1))

    index_path, result = ensure_index(shard)

    assert index_path == os.fspath(foreign)
    assert not result.stats_known
    assert result.num_samples == 1
    assert not sidecar_path(foreign).exists()


def test_ensure_index_replaces_older_foreign_index(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x")])
    foreign = default_index_path(shard)
    foreign.write_text("v1.2 1\njpg 512 100 a.jpg\n")
    os.utime(foreign, ns=(1, 1))

    _, result = ensure_index(shard)

    assert result.stats_known
    assert sidecar_path(foreign).is_file()


def test_ensure_index_falls_back_to_cache(tmp_path, monkeypatch):
    shard_dir = tmp_path / "readonly"
    shard_dir.mkdir()
    shard = _write_tar(shard_dir / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x")])
    cache = tmp_path / "cache"
    make_folder_read_only(monkeypatch, shard_dir)
    index_path, result = ensure_index(shard, cache_dir=cache)

    assert Path(index_path) == cached_index_path(shard, cache)
    assert Path(index_path).parent == cache
    assert result.num_samples == 1
    assert not default_index_path(shard).exists()

    # The second call finds the cached index instead of building again.
    _, reused = ensure_index(shard, cache_dir=cache)
    assert reused.samples is None


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_ensure_index_read_only_folder(tmp_path):
    shard_dir = tmp_path / "readonly"
    shard_dir.mkdir()
    shard = _write_tar(shard_dir / "s.tar", [("a.jpg", _jpeg(1)), ("a.txt", b"x")])
    shard_dir.chmod(0o555)
    try:
        index_path, _ = ensure_index(shard, cache_dir=tmp_path / "cache")
    finally:
        shard_dir.chmod(0o755)
    assert Path(index_path).parent == tmp_path / "cache"


def test_cache_name_changes_with_shard(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", [("a.jpg", b"1")])
    before = cached_index_path(shard, tmp_path)
    os.utime(shard, ns=(5, 5))
    assert cached_index_path(shard, tmp_path) != before
    assert before.name.startswith("s-")


def test_ensure_index_missing_shard(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        ensure_index(tmp_path / "nope.tar")


def test_read_index_rejects_malformed(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_text("v1.1 1\njpg 0 1 a.jpg\n")
    with pytest.raises(ValueError, match="not a v1.2 index"):
        read_index(path)
    path.write_text("v1.2 2\njpg 0 1 a.jpg\n")
    with pytest.raises(ValueError, match="announces 2 samples but lists 1"):
        read_index(path)
    path.write_text("v1.2 1\njpg 0 1\n")
    with pytest.raises(ValueError, match="line 2"):
        read_index(path)


def test_normalize_extensions_errors():
    assert normalize_extensions("JPG;Png") == ("jpg;png",)
    with pytest.raises(ValueError, match="invalid extension '.jpg'"):
        normalize_extensions([".jpg", "txt"])
    with pytest.raises(ValueError, match="invalid extension ''"):
        normalize_extensions(["jpg;", "txt"])
    with pytest.raises(ValueError, match="at least one"):
        normalize_extensions([])
    with pytest.raises(TypeError, match="sequence of strings"):
        normalize_extensions([1])


def test_dali_reads_odd_layout_index(tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    truncated_source = _jpeg(9)
    shard = _write_tar(
        tmp_path / "s.tar",
        [
            ("__MACOSX/._A.JPG", b"junk"),
            ("A.JPG", _jpeg(1)), ("A.TXT", b"upper case"),
            ("img.001.jpg", _jpeg(2)), ("img.001.txt", b"dotted key"),
            ("nocaption.jpg", _jpeg(3)),
            ("p.png", _jpeg(4)), ("p.txt", b"png extension, jpeg bytes"),
            ("last.txt", b"cut"), ("last.jpg", truncated_source),
        ],
    )
    last = build_index(shard).samples[-1].component("txt")  # last.txt, just before last.jpg
    shard.write_bytes(shard.read_bytes()[: last.offset + 512 + 512 + 300])
    index_path, result = ensure_index(shard)
    assert result.truncated_member == "last.jpg"
    assert result.num_samples == 3

    @dali.pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def pipeline():
        image, caption = fn.readers.webdataset(
            paths=[os.fspath(shard)], index_paths=[index_path], ext=["jpg;jpeg;png;webp", "txt"],
            missing_component_behavior="error", name="reader",
        )
        return fn.decoders.image(image, device="cpu"), caption

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == 3
    images, captions = pipe.run()
    texts = sorted(bytes(np.asarray(captions[i])).decode() for i in range(3))
    assert texts == ["dotted key", "png extension, jpeg bytes", "upper case"]
    assert {np.asarray(images[i]).shape for i in range(3)} == {(24, 32, 3)}
