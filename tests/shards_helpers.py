"""Helpers shared by the shard tests."""

from __future__ import annotations

import os
from pathlib import Path

from pgs_dali.shards import index as index_module


def make_folder_read_only(monkeypatch, folder: Path) -> None:
    """Make index writes into ``folder`` fail with PermissionError, even for root."""
    original = index_module._write_atomic

    def reject_folder(path, text):
        if Path(path).parent == folder:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        original(path, text)

    monkeypatch.setattr(index_module, "_write_atomic", reject_folder)
