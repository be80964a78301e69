"""A server's socket folder, ``$TMPDIR/shardpipe-serve-<pid>-XXXXXXXX``: one IPC socket per worker.

A server removes its folder when it stops; one killed by SIGKILL cannot, so each server, at start,
removes the folders of servers that no longer run. A live server holds an exclusive ``flock`` on
the folder's ``lock`` file (its forked workers share it), so "no longer runs" is asked of the lock,
which also holds across pid namespaces sharing one ``/tmp``; a folder without the lock file (made
by a server that has not locked it yet) counts as live while the pid in its name runs. Only this
user's folders, only real folders (a symlink is never followed), only names of exactly that pattern.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import tempfile

PREFIX = "shardpipe-serve-"
LOCK = "lock"
#: a server's pid, then tempfile.mkdtemp's 8 random characters
_NAME = re.compile(r"shardpipe-serve-([1-9][0-9]{0,6})-[a-z0-9_]{8}")


def make_socket_folder() -> tuple[str, int]:
    """A new socket folder for this process (after removing those of servers that are gone) and the
    descriptor of its lock, to keep open while the server runs (closing it marks the folder stale)."""
    root = tempfile.gettempdir()
    remove_stale_folders(root)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.join(path, LOCK + ".new"), flags, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(os.path.join(path, LOCK + ".new"), os.path.join(path, LOCK))  # seen by others only once locked
    return path, fd


def remove_stale_folders(root: str) -> list[str]:
    """Remove this user's socket folders in ``root`` whose server is not running; return their paths."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    removed = []
    for name in names:
        match = _NAME.fullmatch(name)
        path = os.path.join(root, name)
        if match and _own_folder(path) and _stale(path, int(match[1])):
            shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: never follows a link inside
            removed.append(path)
    return removed


def _own_folder(path: str) -> bool:
    """Whether ``path`` itself (not a symlink's target) is a folder of this user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _stale(path: str, pid: int) -> bool:
    """Whether the server of the folder ``path`` (named by ``pid``) is gone: nobody holds its lock."""
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return not _running(pid)  # not locked yet (or made before locks): ask for the process
    except OSError:
        return False  # a link, or unreadable: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its server (or one of its workers) runs
    finally:
        os.close(fd)  # (releases the lock just taken)
    return True


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: a killed server waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or an impossible pid): keep the folder
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc here: os.kill found it
