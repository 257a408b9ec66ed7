"""Files that appear whole or not at all, however many processes write them at once.

``prepare_data`` runs once per node, and nodes often share the data folder; containers on
different nodes repeat process ids, so a temporary name built from ``os.getpid()`` can be the same
for two writers, which then write into one file and rename it from under each other.
``atomic_file`` writes to a unique name that ``tempfile.mkstemp`` creates (exclusively) in the
target's own folder (a rename within one file system is atomic; across file systems it is not) and
``os.replace``-s it onto the target when the writing succeeds; on any error the temporary file is
removed and the target is left as it was. Concurrent writers of the same content each rename a
whole file, and the last rename wins.

Shape legend: none (bytes only).
"""

from __future__ import annotations

import os
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
