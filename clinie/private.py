"""Everything clinie writes is readable by its own user only: files 0600, directories 0700.

The store, the LLM call cache, every model version (a tokenizer's vocabulary, a training's
examples), reports and run files can all hold note text, so none may be readable by another
account on the host. Two mechanisms, one for each kind of writer:

- ``restrict_umask()`` at every entry point (the ``clinie`` command line, ``clinie serve``, the
  app factory): whatever the process then creates — by clinie, transformers, numpy or a report
  writer — is born private, with no chmod to forget anywhere.
- ``private_dir()`` / ``private_file()`` for the SQLite files (store and call cache), which are
  created with those modes explicitly, so that they are private even in a process that started
  elsewhere (a library user, a test) under a permissive umask. SQLite creates a database's
  ``-wal`` and ``-shm`` files with the database file's mode.

Directories that already exist are the operator's and are left as they are; a database file
(or its ``-wal``/``-shm``) left readable by an older version is tightened when it is opened.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> old = os.umask(0o022)
    >>> db = private_file(root / "data" / "store.sqlite3")
    >>> _ = os.umask(old)
    >>> oct(db.stat().st_mode & 0o777), oct(db.parent.stat().st_mode & 0o777)
    ('0o600', '0o700')
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: No permission for group and others on anything created while it is in force.
PRIVATE_UMASK = 0o077


def restrict_umask() -> None:
    """Keep the process's umask, with group and other permissions removed as well."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a directory; the missing ones on the way to it are created 0700."""
    for directory in reversed([path, *path.parents]):
        if not directory.is_dir():
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:  # another process or thread created it meanwhile
                pass
    return path


def private_file(path: Path, *, create: bool = True) -> Path:
    """``path`` readable by its owner only: created empty (0600, in a private directory) when
    missing unless ``create`` is false, its group and other permissions removed when present.

    The file is never opened: on Linux, closing any descriptor of a file releases every POSIX
    lock the process holds on it — SQLite's locks on a live database included — and a second
    process (``clinie purge``, a backup) would then take the backend's ``-wal`` for its own and
    delete it (SQLite's "How to corrupt an SQLite database file", 2.2). So it is created by
    ``mknod`` and its mode changed by path.
    """
    if create:
        private_dir(path.parent)
        try:
            os.mknod(path, stat.S_IFREG | 0o600)
        except FileExistsError:
            pass
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return path
    if mode & PRIVATE_UMASK:
        os.chmod(path, mode & ~PRIVATE_UMASK)
    return path
