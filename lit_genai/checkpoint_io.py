"""Checkpoint files written whole: a kill or a full disk during a save leaves the previous file as it was.

Lightning 2.6's ``TorchCheckpointIO`` serialises the checkpoint into memory and writes it through an
fsspec transaction, which for a local path writes a temporary file in the *system* temporary folder
(``tempfile.mkstemp()``, often a small tmpfs) and then ``shutil.move``-s it onto the target: across
file systems that is a copy into the target, so a kill during it leaves a truncated ``last.ckpt``; a
full temporary folder fails a save that the checkpoint disk had room for; nothing is fsync-ed; and
an ``OSError`` is a long traceback (``lightning.fabric.utilities.cloud_io._atomic_save``).

``AtomicCheckpointIO`` writes local checkpoints through ``atomic.atomic_file`` instead: ``torch.save``
streams into a temporary file beside the target (``.last.ckpt.<random>.partial``, same file system),
which is fsync-ed and ``os.replace``-d onto the target, and the folder is fsync-ed so that the rename
survives a power cut. Any ``OSError`` while writing (``ENOSPC``, ``EDQUOT``, ``EIO``, ``EACCES``) is
one ``LitGenAIError`` line naming the file and the cause; the temporary file is removed and the
previous checkpoint stays. A kill (SIGKILL, a pre-empted node) can leave a temporary file behind; the
next successful save of the same target removes it (one process, global rank 0, writes a run's
checkpoints). Remote paths (``s3://``, ``gs://``) and ``storage_options`` go to Lightning's writer.

``use_atomic_checkpoints`` puts it in a trainer whose strategy would use Lightning's default writer;
``lit-genai`` does so for every run (a ``CheckpointIO`` of the user's, ``--trainer.plugins``, is kept).
"""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path
from typing import Any, BinaryIO, Optional

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins import TorchCheckpointIO
from typing_extensions import override

from lit_genai.atomic import PARTIAL_SUFFIX, atomic_file
from lit_genai.errors import LitGenAIError

# Causes a user fixes by making room rather than by fixing the folder.
_NO_ROOM = {getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with whole-file local writes and one-line write errors."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote, or Lightning's TypeError
            return
        path = Path(path)
        existed = path.exists()
        try:
            with atomic_file(path) as out:
                _save(checkpoint, out)
                os.fsync(out.fileno())  # the data is on disk before the rename makes it the checkpoint
            _fsync_folder(path.parent)
        except OSError as error:
            raise LitGenAIError(_message(path, error, existed)) from error
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL_SUFFIX}"):
            stale.unlink(missing_ok=True)  # left by a save that was killed


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Write ``trainer``'s checkpoints through ``AtomicCheckpointIO`` where its strategy would use
    Lightning's default ``TorchCheckpointIO``; another ``CheckpointIO`` (the user's, XLA's, an async
    wrapper) is left alone."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def _save(checkpoint: dict[str, Any], out: BinaryIO) -> None:
    """``torch.save`` into ``out``, raising the ``OSError`` of a failed write itself: torch reports it
    as a ``RuntimeError`` ("unexpected pos ...") that drops the cause (errno) on the way."""
    writer = _KeepWriteError(out)
    try:
        torch.save(checkpoint, writer)
    except RuntimeError:
        if writer.error is None:
            raise
        raise writer.error from None
    out.flush()


class _KeepWriteError:
    """The ``write`` and ``flush`` of a file (all that ``torch.save`` calls), keeping their ``OSError``."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        return self._call(self.file.write, data)

    def flush(self) -> None:
        self._call(self.file.flush)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except OSError as error:
            self.error = error
            raise


def _message(path: Path, error: OSError, existed: bool) -> str:
    name = errno.errorcode.get(error.errno or 0)
    cause = f"{error.strerror or error} ({name})" if name else str(error)
    kept = f"the previous {path.name} is unchanged" if existed else "no file was written"
    fix = (
        "free space there or set checkpoint.dirpath to another disk"
        if error.errno in _NO_ROOM
        else "check that the folder is writable, or set checkpoint.dirpath to another one"
    )
    return f"cannot write checkpoint {path}: {cause}; {kept}: {fix}"


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform can."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; its rename is flushed with the file system's journal
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse to fsync a folder; the file itself is synced
    finally:
        os.close(fd)
