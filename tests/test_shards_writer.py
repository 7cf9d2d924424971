"""Tests for ShardWriter and expand_shard_paths."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from pgs_dali.shards import ShardWriter, build_index, expand_shard_paths, read_index
from pgs_dali.shards.index import format_index, sidecar_path


def _write_samples(folder: Path, keys: list[str], samples_per_shard: int = 3) -> ShardWriter:
    with ShardWriter(folder, samples_per_shard=samples_per_shard) as writer:
        for key in keys:
            writer.write(key, {"txt": f"caption of {key}", "jpg": key.encode() * 10, "json": "{}"})
    return writer


def test_writer_rolls_over_shards(tmp_path):
    writer = _write_samples(tmp_path, [f"{i:04d}" for i in range(7)])

    names = [Path(path).name for path in writer.paths]
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [result.num_samples for result in writer.index_results] == [3, 3, 1]
    for path in writer.paths:
        assert Path(path).with_suffix(".idx").is_file()
        assert sidecar_path(Path(path).with_suffix(".idx")).is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_writer_sorts_members_and_zeroes_mtime(tmp_path):
    writer = _write_samples(tmp_path, ["b", "c", "a"], samples_per_shard=10)

    with tarfile.open(writer.paths[0]) as archive:
        members = archive.getmembers()
        contents = {m.name: archive.extractfile(m).read() for m in members}
    assert [m.name for m in members] == [
        "a.jpg", "a.json", "a.txt", "b.jpg", "b.json", "b.txt", "c.jpg", "c.json", "c.txt",
    ]
    assert {m.mtime for m in members} == {0}
    assert {(m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0o644)}
    assert contents["c.txt"] == b"caption of c"


def test_writer_output_is_deterministic(tmp_path):
    # Within one shard the order of write() calls does not matter.
    first = _write_samples(tmp_path / "one", ["x", "y", "z", "w"], samples_per_shard=10)
    second = _write_samples(tmp_path / "two", ["w", "z", "y", "x"], samples_per_shard=10)

    for path_one, path_two in zip(first.paths, second.paths, strict=True):
        digest_one = hashlib.sha256(Path(path_one).read_bytes()).hexdigest()
        digest_two = hashlib.sha256(Path(path_two).read_bytes()).hexdigest()
        assert digest_one == digest_two


def test_writer_index_matches_scan(tmp_path):
    writer = _write_samples(tmp_path, ["k1", "k2", "k3", "k4"])

    for path in writer.paths:
        written = Path(path).with_suffix(".idx").read_text()
        assert written == format_index(build_index(path).samples)


def test_writer_index_offsets_point_at_data(tmp_path):
    long_key = "folder/" + "n" * 150  # needs a PAX header for the long name
    with ShardWriter(tmp_path) as writer:
        writer.write(long_key, {"jpg": b"\xff" * 700, "txt": "long name"})
        writer.write("short", {"jpg": b"", "txt": "empty image"})

    data = Path(writer.paths[0]).read_bytes()
    samples = read_index(Path(writer.paths[0]).with_suffix(".idx"))
    by_name = {c.name: c for s in samples for c in s.components}
    assert data[by_name[long_key + ".txt"].offset:][:9] == b"long name"
    assert by_name[long_key + ".jpg"].size == 700
    assert by_name["short.jpg"].size == 0
    assert data[by_name["short.txt"].offset:][:11] == b"empty image"


def test_writer_leaves_incomplete_samples_out_of_index(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write("a", {"jpg": b"1", "txt": "x"})
        writer.write("b", {"jpg": b"2"})

    result = writer.index_results[0]
    assert result.num_samples == 1
    assert result.counts_by_reason() == {"missing caption": 1}
    with tarfile.open(writer.paths[0]) as archive:
        assert "b.jpg" in archive.getnames()


def test_writer_no_samples_no_shard(tmp_path):
    with ShardWriter(tmp_path / "out") as writer:
        pass
    assert writer.paths == []
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "key", ["", "a.b", "dir/a.b", ".hidden", "/abs", "with space", "a/../b"]
)
def test_writer_rejects_invalid_key(tmp_path, key):
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="invalid sample key"):
            writer.write(key, {"jpg": b""})


def test_writer_rejects_bad_input(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write("a", {"jpg": b""})
        with pytest.raises(ValueError, match="already written"):
            writer.write("a", {"jpg": b""})
        with pytest.raises(ValueError, match="invalid extension '.jpg'"):
            writer.write("b", {".jpg": b""})
        with pytest.raises(TypeError, match="must be bytes or str"):
            writer.write("c", {"jpg": 3})
        with pytest.raises(TypeError, match="must be a str"):
            writer.write(3, {"jpg": b""})
        with pytest.raises(ValueError, match="has no files"):
            writer.write("d", {})
    with pytest.raises(ValueError, match="closed"):
        writer.write("e", {"jpg": b""})
    with pytest.raises(ValueError, match="at least 1"):
        ShardWriter(tmp_path, samples_per_shard=0)
    with pytest.raises(TypeError, match="must be an int"):
        ShardWriter(tmp_path, samples_per_shard=2.0)
    with pytest.raises(ValueError, match="prefix"):
        ShardWriter(tmp_path, prefix="a/b")


def test_writer_str_content_is_utf8(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write("a", {"jpg": bytearray(b"12"), "txt": "caf\u00e9"})
    with tarfile.open(writer.paths[0]) as archive:
        assert archive.extractfile("a.txt").read() == "caf\u00e9".encode()


@pytest.fixture
def shard_folder(tmp_path):
    for i in range(12):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(b"")
    return tmp_path


def test_expand_brace_range(shard_folder):
    paths = expand_shard_paths(str(shard_folder / "shard-{000002..000004}.tar"))
    assert [Path(p).name for p in paths] == ["shard-000002.tar", "shard-000003.tar", "shard-000004.tar"]


def test_expand_glob_is_sorted(shard_folder):
    paths = expand_shard_paths(shard_folder / "shard-00000?.tar")
    assert [Path(p).name for p in paths] == [f"shard-{i:06d}.tar" for i in range(10)]


def test_expand_list_keeps_order_and_dedups(shard_folder):
    first = str(shard_folder / "shard-000005.tar")
    second = str(shard_folder / "shard-000001.tar")
    assert expand_shard_paths([first, second, first]) == [first, second]
    assert expand_shard_paths((first,)) == [first]


def test_expand_double_colon_list(shard_folder):
    first = str(shard_folder / "shard-000003.tar")
    pattern = first + "::" + str(shard_folder / "shard-00001{0,1}.tar")
    assert [Path(p).name for p in expand_shard_paths(pattern)] == [
        "shard-000003.tar", "shard-000010.tar", "shard-000011.tar",
    ]


def test_expand_missing_path_names_it(shard_folder):
    missing = str(shard_folder / "shard-000099.tar")
    with pytest.raises(FileNotFoundError, match="shard-000099.tar"):
        expand_shard_paths([missing])
    with pytest.raises(FileNotFoundError, match="check the brace range"):
        expand_shard_paths(str(shard_folder / "shard-{000010..000013}.tar"))


def test_expand_unmatched_glob_raises(shard_folder):
    with pytest.raises(ValueError, match=r"no shard matches .*\*\.tgz.*glob pattern"):
        expand_shard_paths(str(shard_folder / "*.tgz"))


def test_expand_rejects_bad_types(shard_folder):
    with pytest.raises(TypeError, match="int"):
        expand_shard_paths(3)
    with pytest.raises(TypeError, match="every shard path"):
        expand_shard_paths([None])
    with pytest.raises(ValueError, match="empty list"):
        expand_shard_paths([])
    with pytest.raises(ValueError, match="empty"):
        expand_shard_paths("")
