"""ShardWriter: writes WebDataset tar shards with their DALI index files."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgs_dali.shards.index import (
    DEFAULT_EXTENSIONS,
    IndexResult,
    TarMember,
    default_index_path,
    group_samples,
    normalize_extensions,
    write_index,
)

logger = logging.getLogger(__name__)

_BLOCK_SIZE = tarfile.BLOCKSIZE


class ShardWriter:
    """Write samples into numbered WebDataset shards plus ``v1.2`` index files.

    Samples are buffered and every ``samples_per_shard`` of them become one
    tar, ``<prefix>000000.tar``, ``<prefix>000001.tar`` and so on, with the
    index ``<prefix>000000.idx`` and its statistics sidecar next to it. Inside
    a shard the samples are sorted by key and the components of a sample by
    extension, and every member has mtime 0, uid/gid 0 and mode 0644, so the
    same samples always give the same bytes.

    Args:
        output_dir: folder for the shards; created if missing. Existing files
            with the same names are overwritten.
        samples_per_shard: samples per tar; the last shard may contain fewer.
        prefix: file name prefix of the shards.
        extensions: required components of the index, see
            :func:`pgs_dali.shards.index.build_index`. A written sample that
            lacks one stays in the tar but is left out of the index.

    Raises:
        TypeError: if ``samples_per_shard`` is not an int.
        ValueError: if ``samples_per_shard < 1`` or ``prefix`` contains a
            path separator, whitespace or a dot.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with ShardWriter(folder, samples_per_shard=2) as writer:
        ...     for i in range(3):
        ...         writer.write(f"{i:04d}", {"jpg": b"...", "txt": f"caption {i}"})
        >>> [os.path.basename(p) for p in writer.paths]
        ['shard-000000.tar', 'shard-000001.tar']
        >>> open(os.path.join(folder, "shard-000001.idx")).read().splitlines()[0]
        'v1.2 1'
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        samples_per_shard: int = 1000,
        prefix: str = "shard-",
        *,
        extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
    ) -> None:
        if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int):
            raise TypeError(f"samples_per_shard must be an int, got {samples_per_shard!r}")
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
        if not isinstance(prefix, str) or any(c in prefix for c in "/\\.") or any(c.isspace() for c in prefix):
            raise ValueError(f"prefix must be a plain file name prefix without '/', '.' or spaces, got {prefix!r}")
        self.output_dir = Path(output_dir)
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.extensions = normalize_extensions(extensions)
        self.paths: list[str] = []
        self.index_results: list[IndexResult] = []
        self._pending: dict[str, list[tuple[str, bytes]]] = {}
        self._keys: set[str] = set()
        self._closed = False
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def num_samples(self) -> int:
        """Number of samples written so far, including buffered ones."""
        return len(self._keys)

    def write(self, key: str, files: Mapping[str, bytes | bytearray | memoryview | str]) -> None:
        """Add one sample.

        Args:
            key: sample key, unique within the writer. It may contain ``/``
                (a folder inside the tar) but no dot in its last part, no
                whitespace, and must not start with ``/`` or ``.``.
            files: extension (``"jpg"``, ``"txt"``, ``"json"``, no leading
                dot) to content. ``str`` content is encoded as UTF-8.

        Raises:
            TypeError: if ``key`` is not a str, ``files`` not a mapping or a
                content neither bytes-like nor str.
            ValueError: if the key or an extension is invalid, the key was
                written before, ``files`` is empty, or the writer is closed.
        """
        if self._closed:
            raise ValueError("ShardWriter is closed; create a new one to write more samples")
        _check_key(key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} was already written")
        if not isinstance(files, Mapping):
            raise TypeError(f"files must be a mapping of extension to bytes, got {type(files).__name__}")
        if not files:
            raise ValueError(f"sample {key!r} has no files")

        components = []
        for extension, content in files.items():
            _check_extension(key, extension)
            if isinstance(content, str):
                content = content.encode("utf-8")
            elif isinstance(content, (bytes, bytearray, memoryview)):
                content = bytes(content)
            else:
                raise TypeError(
                    f"content of {key}.{extension} must be bytes or str, got {type(content).__name__}"
                )
            components.append((extension, content))
        if len({extension for extension, _ in components}) != len(components):
            raise ValueError(f"sample {key!r} has the same extension twice: {sorted(files)}")

        self._keys.add(key)
        self._pending[key] = sorted(components)
        if len(self._pending) >= self.samples_per_shard:
            self._write_shard()

    def close(self) -> None:
        """Write the buffered samples as the last shard. Calling it again does nothing."""
        if self._closed:
            return
        if self._pending:
            self._write_shard()
        self._closed = True

    def _write_shard(self) -> None:
        # NOTE: a whole shard is buffered in memory so its samples can be
        # sorted by key; memory use is about samples_per_shard x sample size.
        path = self.output_dir / f"{self.prefix}{len(self.paths):06d}.tar"
        temporary = path.with_name(f".{path.name}.tmp")
        members: list[TarMember] = []
        with open(temporary, "wb") as file, tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for key in sorted(self._pending):
                for extension, content in self._pending[key]:
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(content)
                    info.mtime = 0
                    info.mode = 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    archive.addfile(info, io.BytesIO(content))
                    # addfile leaves archive.offset after the zero padding of the data.
                    padded = -(-len(content) // _BLOCK_SIZE) * _BLOCK_SIZE
                    members.append(TarMember(info.name, archive.offset - padded, len(content)))
        os.replace(temporary, path)
        self._pending = {}

        samples, excluded = group_samples(members, os.fspath(path), self.extensions)
        result = IndexResult(
            shard=os.fspath(path),
            num_samples=len(samples),
            excluded=excluded,
            extensions=self.extensions,
            samples=samples,
        )
        write_index(result, default_index_path(path))
        if excluded:
            logger.warning(
                "shard %s: %d samples left out of the index: %s",
                path, len(excluded), result.counts_by_reason(),
            )
        logger.debug("wrote %s with %d samples", path, len(samples))
        self.paths.append(os.fspath(path))
        self.index_results.append(result)


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"sample key must be a str, got {type(key).__name__}: {key!r}")
    base = key.rpartition("/")[2]
    if not base or "." in base or key.startswith(("/", ".")) or any(c.isspace() for c in key):
        raise ValueError(
            f"invalid sample key {key!r}: it must be non-empty, have no dot after the last '/', "
            "no whitespace, and not start with '/' or '.'"
        )
    if ".." in key.split("/"):
        raise ValueError(f"invalid sample key {key!r}: '..' is not allowed")


def _check_extension(key: str, extension: object) -> None:
    if not isinstance(extension, str):
        raise TypeError(f"extension of sample {key!r} must be a str, got {extension!r}")
    if not extension or extension.startswith(".") or "/" in extension or any(c.isspace() for c in extension):
        raise ValueError(
            f"invalid extension {extension!r} for sample {key!r}: write it without a leading dot, "
            "'/' or whitespace, e.g. 'jpg'"
        )
