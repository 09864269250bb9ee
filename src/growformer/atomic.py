"""Atomic file writes: a reader (another process, a later run) sees the old file or the whole
new one, never part of it, even after a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, synced to disk,
    and a rename. The file gets the mode a plain ``open`` would give it (0666 less the umask);
    two processes writing the same path at once both end with one complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def creation_problem(path: Path, *, folder: bool = True) -> str | None:
    """Why nothing could be created at ``path``: its nearest existing ancestor is not a
    folder, or (for a ``folder``, which would be made at the link's target) it is a symbolic
    link to nothing; None when neither. Checked before any work, so that the error names the
    path instead of an errno. A file is written beside ``path`` and renamed over it, which
    replaces a link itself."""
    if folder and path.is_symlink() and not path.exists():
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    for parent in path.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is not a folder"
            return None
    return None


def nesting(path: Path, other: Path) -> str | None:
    """Where ``path`` lies against ``other``, both resolved (links followed): ``"same"``,
    ``"inside"`` (``other`` is one of its parents), ``"holding"`` (it is one of ``other``'s
    parents), or None when they are apart."""
    path, other = path.resolve(), other.resolve()
    if path == other:
        return "same"
    if other in path.parents:
        return "inside"
    if path in other.parents:
        return "holding"
    return None


def current_umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` where the kernel reports it (Linux
    4.7+), which changes nothing; elsewhere by setting it and putting it back, during which a
    file another thread creates would get mode 0666/0777."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask
