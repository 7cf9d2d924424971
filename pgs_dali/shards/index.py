"""DALI index files for WebDataset shards, with the samples they leave out.

``fn.readers.webdataset`` reads an index file (format ``v1.2``) instead of
scanning every tar at start-up. Its first line is ``v1.2 <sample count>``, and
each further line describes one sample as ``ext offset size name`` repeated
per component, where ``offset`` is the byte offset of the member's data in the
tar. The index decides which members form a sample and under which extension
the reader finds them, so this module also applies the grouping rules and
leaves out samples that the loader cannot use. Every item left out is recorded
with its shard, key and reason in a JSON sidecar ``<index>.json``, so the
numbers are available again when an existing index is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt",)
# One entry per required component, in the format of the ``ext`` argument of
# ``fn.readers.webdataset``: alternatives are separated by ";".
DEFAULT_EXTENSIONS = (";".join(IMAGE_EXTENSIONS), ";".join(CAPTION_EXTENSIONS))
INDEX_VERSION = "v1.2"
SIDECAR_FORMAT = "pgs_dali index stats"
SIDECAR_VERSION = 1
DEFAULT_CACHE_DIR = Path("~/.cache/pgs_dali/index")
# Reasons recorded for tar members that are not a lost sample: a stray file
# belongs to no sample, and a sample with a duplicate component is kept.
NON_SAMPLE_REASONS = frozenset({"stray file", "duplicate component"})

_STRAY_DIRECTORIES = frozenset({"__MACOSX"})
_STRAY_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Large reads make the streaming scan fast, because tarfile reads the member
# data through this buffer even though only the headers are needed.
# NOTE: the scan therefore reads the whole shard. That took about 0.5 s for
# 200 MB from the page cache on a 2-core x86 machine, and takes longer on
# cold network storage.
_SCAN_BUFFER_SIZE = 1 << 20


@dataclasses.dataclass(frozen=True)
class TarMember:
    """A regular file inside a tar: its name, data offset and size in bytes."""

    name: str
    offset: int
    size: int


@dataclasses.dataclass(frozen=True)
class IndexedComponent:
    """One component of an indexed sample, as written to the index line."""

    extension: str
    offset: int
    size: int
    name: str


@dataclasses.dataclass(frozen=True)
class IndexedSample:
    """A sample of the index: its key and its components in tar order."""

    key: str
    components: tuple[IndexedComponent, ...]

    def component(self, extensions: str) -> IndexedComponent | None:
        """Return the first component whose extension is one of ``a;b;c``, or None."""
        wanted = set(extensions.split(";"))
        for component in self.components:
            if component.extension in wanted:
                return component
        return None


@dataclasses.dataclass(frozen=True)
class ExcludedItem:
    """A sample or tar member left out of the index, and the reason."""

    shard: str
    key: str
    reason: str


@dataclasses.dataclass
class IndexResult:
    """Outcome of indexing one shard: the kept samples and the excluded items.

    Attributes:
        shard: path of the tar file.
        num_samples: number of samples in the index.
        excluded: samples and tar members left out, with their reasons.
        extensions: the required components, in ``fn.readers.webdataset``
            ``ext`` format (``"jpg;png"`` accepts either).
        samples: the indexed samples; None when the result was loaded from a
            sidecar file.
        truncated_member: name of a member whose data runs past the end of
            the tar (the members before it are kept), or None.
        tar_error: message of a read error that ended the scan early, or None.
        verified: True when every kept sample passed a full decode check.
        max_pixels: the pixel limit of that check (None: no limit).
        stats_known: False for an index written by another tool without a
            sidecar; then ``excluded`` is empty because it is unknown.
        index_path: where the index file was written or found, if anywhere.
    """

    shard: str
    num_samples: int
    excluded: list[ExcludedItem]
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    samples: list[IndexedSample] | None = None
    truncated_member: str | None = None
    tar_error: str | None = None
    verified: bool = False
    max_pixels: int | None = None
    stats_known: bool = True
    index_path: str | None = None

    def counts_by_reason(self) -> dict[str, int]:
        """Count the excluded items per reason."""
        counts: dict[str, int] = {}
        for item in self.excluded:
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return counts

    def to_dict(self) -> dict:
        """Return the JSON-serializable statistics (without the sample list)."""
        return {
            "shard": self.shard,
            "num_samples": self.num_samples,
            "extensions": list(self.extensions),
            "excluded": [{"key": item.key, "reason": item.reason} for item in self.excluded],
            "truncated_member": self.truncated_member,
            "tar_error": self.tar_error,
            "verified": self.verified,
            "max_pixels": self.max_pixels,
        }

    @classmethod
    def from_dict(cls, data: dict) -> IndexResult:
        """Rebuild a result (without the sample list) from :meth:`to_dict` output."""
        shard = data["shard"]
        return cls(
            shard=shard,
            num_samples=int(data["num_samples"]),
            excluded=[ExcludedItem(shard, item["key"], item["reason"]) for item in data["excluded"]],
            extensions=tuple(data["extensions"]),
            truncated_member=data.get("truncated_member"),
            tar_error=data.get("tar_error"),
            verified=bool(data.get("verified", False)),
            max_pixels=data.get("max_pixels"),
        )


def normalize_extensions(extensions: str | Sequence[str]) -> tuple[str, ...]:
    """Lower-case and validate the required components (``ext`` format).

    Raises:
        TypeError: if ``extensions`` is not a string or a sequence of strings.
        ValueError: if it is empty, has an empty alternative, or an
            alternative with whitespace or a leading dot.
    """
    if isinstance(extensions, str):
        extensions = (extensions,)
    if not isinstance(extensions, Sequence) or not all(isinstance(e, str) for e in extensions):
        raise TypeError(f"extensions must be a sequence of strings, got {extensions!r}")
    if not extensions:
        raise ValueError("extensions must name at least one component, got an empty sequence")
    normalized = []
    for entry in extensions:
        alternatives = entry.lower().split(";")
        for alternative in alternatives:
            if not alternative or alternative.startswith(".") or any(c.isspace() for c in alternative):
                raise ValueError(
                    f"invalid extension {alternative!r} in {entry!r}: write extensions "
                    "without a leading dot or spaces, alternatives separated by ';'"
                )
        normalized.append(";".join(alternatives))
    return tuple(normalized)


def default_index_path(tar_path: str | os.PathLike) -> Path:
    """Return the index path next to a shard: ``shard-000000.tar`` -> ``shard-000000.idx``."""
    path = Path(tar_path)
    if path.suffix.lower() == ".tar":
        return path.with_suffix(".idx")
    return path.with_name(path.name + ".idx")


def sidecar_path(index_path: str | os.PathLike) -> Path:
    """Return the path of the statistics sidecar of an index: ``<index>.json``."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".json")


def cached_index_path(tar_path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    """Return the index path for a shard in the cache folder.

    The name is derived from the shard's absolute path, size and modification
    time, so a changed shard gets a new entry instead of a stale one.
    """
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    tar_path = Path(tar_path).resolve()
    stat = tar_path.stat()
    identity = f"{tar_path}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return folder / f"{tar_path.stem}-{digest}.idx"


def scan_tar(tar_path: str | os.PathLike) -> tuple[list[TarMember], list[ExcludedItem], str | None, str | None]:
    """Read the member list of a tar in streaming mode.

    Returns:
        ``(members, stray, truncated_member, tar_error)``. ``members`` are
        the regular files whose data lies completely inside the file, and
        ``stray`` lists the other members (directories, links) as
        ``"stray file"`` items. ``truncated_member`` names a member cut off
        by the end of the file, and ``tar_error`` is the message of a read
        error that ended the scan. A zero-byte file is an empty tar, not an
        error.
    """
    shard = os.fspath(tar_path)
    members: list[TarMember] = []
    stray: list[ExcludedItem] = []
    truncated_member = None
    tar_error = None
    with open(shard, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        if file_size == 0:
            return members, stray, None, None
        try:
            with tarfile.open(fileobj=file, mode="r|", bufsize=_SCAN_BUFFER_SIZE) as archive:
                for member in archive:
                    if member.offset_data + member.size > file_size:
                        truncated_member = member.name
                        break
                    if member.isreg():
                        members.append(TarMember(member.name, member.offset_data, member.size))
                    else:
                        stray.append(ExcludedItem(shard, member.name, "stray file"))
                end_offset = archive.offset
        except (tarfile.ReadError, EOFError) as error:
            tar_error = str(error) or type(error).__name__
        else:
            # tarfile ends the scan silently at a truncated or invalid header
            # after the first member; only zero padding may follow the end.
            if truncated_member is None and not _only_zeros(file, end_offset):
                tar_error = f"truncated or invalid member header at byte {end_offset}"
    return members, stray, truncated_member, tar_error


def _only_zeros(file, offset: int) -> bool:
    """Check that the file contains only zero bytes from ``offset`` to its end."""
    file.seek(offset)
    while chunk := file.read(_SCAN_BUFFER_SIZE):
        if chunk.count(0) != len(chunk):
            return False
    return True


def group_samples(
    members: Iterable[TarMember],
    shard: str,
    extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
) -> tuple[list[IndexedSample], list[ExcludedItem]]:
    """Group tar members into samples and drop the samples the loader cannot use.

    The key of ``dir/a.b.jpg`` is the path up to the first dot of the file
    name (``dir/a``, extension ``b.jpg``), the WebDataset rule. When that
    full extension is not requested but the last one is (``jpg``), the file
    goes to the key before its last dot (``dir/a.b``) instead, unless a
    sample ``dir/a`` exists, i.e. another file of that key has a requested
    extension (then ``a.b.jpg`` stays an extra component of ``a``, like a
    segmentation mask ``a.seg.png``). Unrequested files whose name without
    its last extension equals a regrouped key join that sample too
    (``img.001.json`` joins ``img.001``). Requested extensions match
    case-insensitively and are written in lower case; other components keep
    their extension as is.

    These items are left out, each with a reason:

    - stray files (``__MACOSX/``, ``.DS_Store``, ``._*``, hidden or
      extension-less names): ``"stray file"``;
    - names with whitespace, because the index format is
      whitespace-separated: ``"whitespace in name"``;
    - a second component of the same requested kind in one sample (the
      first one is kept): ``"duplicate component"``;
    - samples missing a requested component: ``"missing image"``,
      ``"missing caption"`` or ``"missing <ext>"``.

    Args:
        members: regular files of the tar, in tar order.
        shard: shard path, stored in the excluded items.
        extensions: required components in ``fn.readers.webdataset`` ``ext``
            format, one entry per component.

    Returns:
        ``(samples, excluded)``, samples in order of their first member.

    Example:
        >>> members = [TarMember("a.jpg", 512, 10), TarMember("a.txt", 1536, 3),
        ...            TarMember("b.JPG", 2560, 10)]
        >>> samples, excluded = group_samples(members, "s.tar")
        >>> [(s.key, [c.extension for c in s.components]) for s in samples]
        [('a', ['jpg', 'txt'])]
        >>> [(e.key, e.reason) for e in excluded]
        [('b', 'missing caption')]
    """
    groups = normalize_extensions(extensions)
    group_of_extension: dict[str, int] = {}
    for group_index, group in enumerate(groups):
        for alternative in group.split(";"):
            group_of_extension.setdefault(alternative, group_index)

    excluded: list[ExcludedItem] = []
    names: list[_MemberName] = []
    for position, member in enumerate(members):
        reason = _stray_reason(member.name)
        if reason is None:
            names.append(_MemberName.parse(position, member))
        else:
            excluded.append(ExcludedItem(shard, member.name, reason))
    real_keys = {n.standard_key for n in names if n.full_extension.lower() in group_of_extension}

    # First pass: files with a requested extension decide the keys.
    samples: dict[str, _PendingSample] = {}
    regrouped_keys: set[str] = set()
    others: list[_MemberName] = []
    for name in names:
        full_extension = name.full_extension.lower()
        last_extension = name.last_extension.lower()
        if full_extension in group_of_extension:
            key, extension = name.standard_key, full_extension
        elif last_extension in group_of_extension and name.standard_key not in real_keys:
            key, extension = name.short_key, last_extension
            regrouped_keys.add(key)
        else:
            others.append(name)
            continue
        group = group_of_extension[extension]
        sample = samples.setdefault(key, _PendingSample())
        if group in sample.groups:
            excluded.append(ExcludedItem(shard, name.member.name, "duplicate component"))
            continue
        sample.add(name, extension, group)

    # Second pass: other files join their sample, or form one that lacks
    # the requested components and is left out below.
    for name in others:
        if name.short_key in regrouped_keys:
            samples.setdefault(name.short_key, _PendingSample()).add(name, name.last_extension)
        else:
            samples.setdefault(name.standard_key, _PendingSample()).add(name, name.full_extension)

    kept: list[IndexedSample] = []
    for key, sample in sorted(samples.items(), key=lambda item: item[1].first_position):
        missing = [group for index, group in enumerate(groups) if index not in sample.groups]
        if missing:
            excluded.append(ExcludedItem(shard, key, _missing_reason(missing[0])))
        else:
            kept.append(IndexedSample(key, sample.components()))
    return kept, excluded


@dataclasses.dataclass(frozen=True)
class _MemberName:
    """A member's name split by the WebDataset rule and by its last dot."""

    position: int
    member: TarMember
    standard_key: str
    full_extension: str
    short_key: str
    last_extension: str

    @classmethod
    def parse(cls, position: int, member: TarMember) -> _MemberName:
        folder, _, base = member.name.rpartition("/")
        prefix = folder + "/" if folder else ""
        first_dot = base.index(".")
        last_dot = base.rindex(".")
        return cls(
            position=position,
            member=member,
            standard_key=prefix + base[:first_dot],
            full_extension=base[first_dot + 1 :],
            short_key=prefix + base[:last_dot],
            last_extension=base[last_dot + 1 :],
        )


class _PendingSample:
    """Components collected for one key while grouping."""

    def __init__(self) -> None:
        self.first_position: int | None = None
        self.groups: set[int] = set()
        self._parts: list[tuple[int, IndexedComponent]] = []

    def add(self, name: _MemberName, extension: str, group: int | None = None) -> None:
        member = name.member
        self._parts.append((name.position, IndexedComponent(extension, member.offset, member.size, member.name)))
        if self.first_position is None or name.position < self.first_position:
            self.first_position = name.position
        if group is not None:
            self.groups.add(group)

    def components(self) -> tuple[IndexedComponent, ...]:
        return tuple(component for _, component in sorted(self._parts, key=lambda part: part[0]))


def _stray_reason(name: str) -> str | None:
    """Return why a tar member cannot be part of a sample, or None."""
    parts = name.split("/")
    base = parts[-1]
    if _STRAY_DIRECTORIES.intersection(parts[:-1]) or base in _STRAY_NAMES:
        return "stray file"
    if not base or base.startswith(".") or "." not in base:
        # Hidden files (including AppleDouble "._x") and names without an
        # extension cannot form a WebDataset sample.
        return "stray file"
    if base.endswith("."):
        return "stray file"
    if any(character.isspace() for character in name):
        return "whitespace in name"
    return None


def _missing_reason(group: str) -> str:
    alternatives = set(group.split(";"))
    if alternatives & set(IMAGE_EXTENSIONS):
        return "missing image"
    if alternatives & set(CAPTION_EXTENSIONS):
        return "missing caption"
    return f"missing {group}"


def build_index(
    tar_path: str | os.PathLike,
    extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
) -> IndexResult:
    """Scan a shard and compute its index without writing anything.

    Broken shards do not raise. A member cut off by the end of the file is
    reported in ``truncated_member``, and the complete members before it
    are kept. A read error ends the scan with ``tar_error`` set. An empty
    tar gives 0 samples. See :func:`group_samples` for the grouping rules.

    Args:
        tar_path: the shard.
        extensions: required components in ``fn.readers.webdataset`` ``ext``
            format; by default an image (jpg, jpeg, png or webp) and a caption
            (txt).

    Returns:
        The result, with ``samples`` set.

    Raises:
        FileNotFoundError: if the shard does not exist.

    Example:
        >>> import io, tarfile, tempfile, pathlib
        >>> tar_path = pathlib.Path(tempfile.mkdtemp()) / "shard.tar"
        >>> with tarfile.open(tar_path, "w") as archive:
        ...     for name in ["a.jpg", "a.txt", "__MACOSX/._a.jpg"]:
        ...         archive.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
        >>> result = build_index(tar_path)
        >>> result.num_samples, result.counts_by_reason()
        (1, {'stray file': 1})
    """
    extensions = normalize_extensions(extensions)
    shard = os.fspath(tar_path)
    if not os.path.isfile(shard):
        raise FileNotFoundError(f"shard not found: {shard!r}")

    members, stray, truncated_member, tar_error = scan_tar(shard)
    samples, excluded = group_samples(members, shard, extensions)
    excluded = stray + excluded
    if truncated_member is not None:
        excluded.append(ExcludedItem(shard, truncated_member, "truncated tar member"))
        logger.warning("shard %s: member %r is cut off by the end of the file", shard, truncated_member)
    if tar_error is not None:
        excluded.append(ExcludedItem(shard, "", f"tar read error: {tar_error}"))
        logger.warning("shard %s: read error after %d members: %s", shard, len(members), tar_error)
    if not samples:
        logger.warning("shard %s contains no usable samples", shard)

    return IndexResult(
        shard=shard,
        num_samples=len(samples),
        excluded=excluded,
        extensions=extensions,
        samples=samples,
        truncated_member=truncated_member,
        tar_error=tar_error,
    )


def format_index(samples: Sequence[IndexedSample]) -> str:
    """Return the text of a ``v1.2`` index file for the samples.

    Example:
        >>> sample = IndexedSample("a", (IndexedComponent("jpg", 512, 10, "a.jpg"),))
        >>> print(format_index([sample]), end="")
        v1.2 1
        jpg 512 10 a.jpg
    """
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for sample in samples:
        lines.append(
            " ".join(f"{c.extension} {c.offset} {c.size} {c.name}" for c in sample.components)
        )
    return "\n".join(lines) + "\n"


def read_index(index_path: str | os.PathLike) -> list[IndexedSample]:
    """Parse a ``v1.2`` index file.

    Raises:
        ValueError: if the file is not a ``v1.2`` index or its sample count
            does not match its lines.
    """
    index_path = os.fspath(index_path)
    with open(index_path, encoding="utf-8") as file:
        header = file.readline().split()
        if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
            raise ValueError(f"{index_path!r} is not a {INDEX_VERSION} index file: header {header!r}")
        samples = []
        for line_number, line in enumerate(file, start=2):
            fields = line.split()
            if not fields:
                continue
            if len(fields) % 4:
                raise ValueError(f"{index_path!r} line {line_number}: expected 'ext offset size name' groups")
            components = tuple(
                IndexedComponent(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                for i in range(0, len(fields), 4)
            )
            key = components[0].name
            dot = components[0].name.rfind("." + components[0].extension)
            if dot > 0:
                key = components[0].name[:dot]
            samples.append(IndexedSample(key, components))
    if len(samples) != int(header[1]):
        raise ValueError(
            f"{index_path!r} announces {header[1]} samples but lists {len(samples)}"
        )
    return samples


def write_index(result: IndexResult, index_path: str | os.PathLike) -> Path:
    """Write ``result.samples`` as an index file plus its statistics sidecar.

    Both files are written to a temporary name and renamed into place, so
    concurrent readers (other ranks) never see a partial file.

    Raises:
        ValueError: if ``result.samples`` is None.
        OSError: if the folder is not writable.
    """
    if result.samples is None:
        raise ValueError(f"result for {result.shard!r} contains no samples to write")
    index_path = Path(index_path)
    stat = os.stat(result.shard)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "tar_path": os.path.abspath(result.shard),
        "tar_size": stat.st_size,
        "tar_mtime_ns": stat.st_mtime_ns,
        **result.to_dict(),
    }
    _write_atomic(index_path, format_index(result.samples))
    _write_atomic(sidecar_path(index_path), json.dumps(sidecar, indent=1) + "\n")
    result.index_path = os.fspath(index_path)
    return index_path


def load_index_stats(
    tar_path: str | os.PathLike,
    index_path: str | os.PathLike,
    extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
) -> IndexResult | None:
    """Return the statistics of an up-to-date index, or None when it must be rebuilt.

    An index is up to date when its sidecar records the shard's current size
    and modification time and the same extensions. An index without a
    sidecar (written by ``wds2idx`` or another tool) is accepted when it is
    at least as new as the shard, and its result has ``stats_known=False``.
    """
    extensions = normalize_extensions(extensions)
    tar_path = os.fspath(tar_path)
    index_path = Path(index_path)
    if not index_path.is_file():
        return None
    tar_stat = os.stat(tar_path)
    sidecar = sidecar_path(index_path)

    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            up_to_date = (
                data.get("format") == SIDECAR_FORMAT
                and data.get("version") == SIDECAR_VERSION
                and data.get("tar_size") == tar_stat.st_size
                and data.get("tar_mtime_ns") == tar_stat.st_mtime_ns
                and tuple(data.get("extensions", ())) == extensions
            )
            if not up_to_date:
                return None
            result = IndexResult.from_dict({**data, "shard": tar_path})
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable index sidecar %s: %s", sidecar, error)
            return None
        result.index_path = os.fspath(index_path)
        return result

    if index_path.stat().st_mtime_ns < tar_stat.st_mtime_ns:
        return None
    try:
        samples = read_index(index_path)
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable index %s: %s", index_path, error)
        return None
    logger.info("using index %s without a sidecar: excluded samples are unknown", index_path)
    return IndexResult(
        shard=tar_path,
        num_samples=len(samples),
        excluded=[],
        extensions=extensions,
        samples=samples,
        stats_known=False,
        index_path=os.fspath(index_path),
    )


def ensure_index(
    tar_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    extensions: str | Sequence[str] = DEFAULT_EXTENSIONS,
    *,
    force: bool = False,
) -> tuple[str, IndexResult]:
    """Return an up-to-date index for a shard, building it when needed.

    Looks for an index next to the shard (``shard.idx``), then in the cache
    folder, and reuses the first that :func:`load_index_stats` accepts.
    Otherwise it builds one next to the shard, or in the cache folder when
    the shard's folder is not writable.

    Args:
        tar_path: the shard.
        cache_dir: folder for indexes of read-only shards; default
            ``~/.cache/pgs_dali/index``.
        extensions: required components, see :func:`build_index`.
        force: rebuild even when an up-to-date index exists.

    Returns:
        ``(index_path, result)``; ``result.samples`` is None when the
        statistics came from a sidecar.

    Raises:
        FileNotFoundError: if the shard does not exist.
        OSError: if neither the shard's folder nor the cache folder is writable.
    """
    extensions = normalize_extensions(extensions)
    tar_path = os.fspath(tar_path)
    if not os.path.isfile(tar_path):
        raise FileNotFoundError(f"shard not found: {tar_path!r}")
    local_path = default_index_path(tar_path)
    cache_path = cached_index_path(tar_path, cache_dir)

    if not force:
        for candidate in (local_path, cache_path):
            result = load_index_stats(tar_path, candidate, extensions)
            if result is not None:
                return os.fspath(candidate), result

    logger.info("building index for %s", tar_path)
    result = build_index(tar_path, extensions)
    return store_index(result, cache_dir), result


def store_index(result: IndexResult, cache_dir: str | os.PathLike | None = None) -> str:
    """Write an index next to its shard, or into the cache folder if that fails.

    Returns:
        The path written.

    Raises:
        OSError: if neither folder is writable.
    """
    local_path = default_index_path(result.shard)
    try:
        return os.fspath(write_index(result, local_path))
    except OSError as error:
        cache_path = cached_index_path(result.shard, cache_dir)
        logger.info("cannot write %s (%s); using cache folder %s", local_path, error, cache_path.parent)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        return os.fspath(write_index(result, cache_path))


def _write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file in the same folder and rename it to ``path``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
