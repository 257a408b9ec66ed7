"""Files that appear whole or not at all, however many processes write them at once.

``prepare_data`` runs once per node, and nodes often share the data folder; containers on
different nodes repeat process ids, so a temporary name built from ``os.getpid()`` can be the same
for two writers, which then write into one file and rename it from under each other.
``atomic_file`` writes to a unique name that ``tempfile.mkstemp`` creates (exclusively) in the
target's own folder (a rename within one file system is atomic; across file systems it is not) and
``os.replace``-s it onto the target when the writing succeeds; on any error the temporary file is
removed and the target is left as it was. Concurrent writers of the same content each rename a
whole file, and the last rename wins.

``atomic_folder`` does the same for a folder that a library fills file by file (a torchvision
download): it fills a unique temporary folder, whose result is renamed into place; a folder cannot
replace a non-empty one, so there the first writer to finish wins and the others' copies are
dropped.

Shape legend: none (bytes only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Union

PARTIAL_SUFFIX = ".partial"  # temporary files are ``.<target name>.<random>.partial``


def _umask() -> int:
    """The process's umask (read once, at import: reading it means setting it, briefly)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes owner-only files; a shared data folder needs what open() would have made.
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_file(path: Union[str, Path]) -> Iterator[BinaryIO]:
    """Open a fresh temporary file beside ``path`` for binary writing; on a clean exit it replaces
    ``path``, on an error it is deleted (module docstring).

    Args:
        path: The final file; its folder is created if missing.

    Yields:
        The temporary file, open in ``"wb"`` mode, its ``name`` its path (``torch.save``,
        ``np.save``, ``ndarray.tofile`` and ``shutil.copyfileobj`` all take it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The leading dot hides the partial file from folder listings; the random part is mkstemp's.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)  # reopened by name, so that the yielded file's ``name`` is its path
    partial = Path(name)
    try:
        os.chmod(partial, _FILE_MODE)
        with open(partial, "wb") as out:
            yield out
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(root: Union[str, Path], folder: str) -> Iterator[Path]:
    """A fresh temporary folder inside ``root``, to fill as if it were ``root``; on a clean exit its
    ``folder`` (a relative path, e.g. ``MNIST/raw``) is renamed to ``root / folder`` unless another
    writer's is there already (module docstring). The temporary folder is removed in any case.

    Args:
        root: The folder that receives ``folder``; created if missing.
        folder: What the body writes under the yielded folder, and what readers look for in ``root``.

    Yields:
        The temporary folder (``root/.<random>.partial``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".", suffix=PARTIAL_SUFFIX))
    try:
        yield scratch
        target = root / folder
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(scratch / folder, target)  # atomic; refuses a non-empty target
        except OSError:
            if not target.is_dir():  # not "another writer finished first"
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
