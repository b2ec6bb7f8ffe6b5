"""Atomic file writes: a temporary file beside the target, renamed into place on success.

A crash (or a killed sweep job) then leaves either the old file or the new one,
never half a file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, for writers that go by it);
    it replaces `path` when the block ends without an error and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; results are for sharing
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """Temporary files `atomic_path` made for `path` (`.<stem>.<random><suffix>` beside it)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = f".{glob.escape(path.stem)}.*{glob.escape(path.suffix)}"
    return sorted(p for p in path.parent.glob(pattern) if p.is_file() and p != path)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer of `path` left behind; returns the removed files.

    Only safe where no other writer of `path` can be at work (the data cache calls it
    under its file lock): a live writer's temporary file looks the same.
    """
    removed = []
    for temporary in temporaries_of(path):
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
            removed.append(temporary)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=float) + "\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """A Lightning CheckpointIO whose checkpoints appear whole or not at all."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)
