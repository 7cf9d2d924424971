"""Expansion of shard path specifications into a list of tar files."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import braceexpand

_GLOB_CHARACTERS = frozenset("*?[")


def expand_shard_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand a shard specification into a de-duplicated list of paths.

    Each pattern is expanded in three steps. A ``::``-joined string is split
    into its parts (the open_clip convention). Brace notation is expanded
    (``shard-{000000..000009}.tar``). Every part that contains ``*``, ``?``
    or ``[`` is matched as a glob, and its matches are sorted. Paths keep
    the order in which they were given, and a path that occurs twice is kept
    only the first time.

    Args:
        data: one pattern (str or path-like), or a list or tuple of them.

    Returns:
        The shard paths as strings, in the order given.

    Raises:
        TypeError: if ``data`` is not a string, path-like, list or tuple.
        ValueError: if a pattern or glob matches no file, or ``data`` is empty.
        FileNotFoundError: if an explicit path (no glob characters) does not
            exist.

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     _ = (folder / f"shard-{i:06d}.tar").write_bytes(b"")
        >>> paths = expand_shard_paths(str(folder / "shard-{000000..000002}.tar"))
        >>> [pathlib.Path(p).name for p in paths]
        ['shard-000000.tar', 'shard-000001.tar', 'shard-000002.tar']
        >>> len(expand_shard_paths(str(folder / "*.tar")))
        3
    """
    if isinstance(data, (str, os.PathLike)):
        patterns = [data]
    elif isinstance(data, (list, tuple)):
        patterns = list(data)
    else:
        raise TypeError(
            "data must be a path, a glob or brace pattern, or a list of them, "
            f"got {type(data).__name__}"
        )
    if not patterns:
        raise ValueError("data is an empty list: give at least one shard path or pattern")

    paths: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, (str, os.PathLike)):
            raise TypeError(
                f"every shard path must be a str or path-like, got {type(pattern).__name__}: "
                f"{pattern!r}"
            )
        for path in _expand_one(os.fspath(pattern)):
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths


def _expand_one(pattern: str) -> list[str]:
    """Expand one pattern, which may hold several ``::``-joined parts."""
    if not pattern.strip():
        raise ValueError(f"shard path is empty: {pattern!r}")
    paths: list[str] = []
    for part in pattern.split("::"):
        if not part:
            raise ValueError(f"empty part between '::' separators in {pattern!r}")
        for expanded in braceexpand.braceexpand(part):
            if _GLOB_CHARACTERS.isdisjoint(expanded):
                if not os.path.exists(expanded):
                    hint = ""
                    if expanded != part:
                        hint = f" (expanded from {part!r}; check the brace range)"
                    raise FileNotFoundError(f"shard not found: {expanded!r}{hint}")
                paths.append(expanded)
                continue
            matches = sorted(glob.glob(expanded))
            if not matches:
                raise ValueError(
                    f"no shard matches {expanded!r}: check the folder, the glob pattern "
                    "and the brace range"
                )
            paths.extend(matches)
    return paths
