"""Files in directories a guest user controls, handled so that nothing the user
planted there is followed.

Everything works from directory descriptors, one path component at a time:
a symbolic link, a FIFO, a device or a hard link to someone else's file in a
user's directory is refused with :class:`Refused`, never opened blocking and
never followed. What counts is always what was opened (``fstat`` of the
descriptor), so swapping an entry between a look and an open gains nothing;
the look before the open (:func:`stat_entry`) only keeps the agent from
opening a device at all. Files are replaced, never written in place: a new
file in the same directory, complete and with its owner and mode set, renamed
over the old name (:func:`replace_file`, also for the agent's own files,
whose directory others may write: ``--statedir /tmp``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
from pathlib import Path

MAX_LINKS = 40  # symbolic links followed on the way to a home directory, as the kernel
_CHUNK = 64 * 1024

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


class Refused(Exception):
    """An entry the agent will not use; the text names it and says why."""

    def __init__(self, shown: str, reason: str) -> None:
        super().__init__(f"refusing '{shown}': {reason}")


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _owner_problem(status: os.stat_result, uid: int) -> str | None:
    if status.st_uid not in (0, uid):
        return f"it belongs to uid {status.st_uid}, neither the user nor root"
    return None


def file_problem(status: os.stat_result, uid: int) -> str | None:
    """Why ``status`` is not a file to use for ``uid``, or None: it must be a
    regular file of ``uid``'s or root's with no other name (a second name is a
    hard link, maybe to a file ``uid`` may not read)."""
    if stat.S_ISLNK(status.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(status.st_mode):
        return f"it is {_kind(status.st_mode)}, not a regular file"
    if status.st_nlink != 1:
        return f"it has {status.st_nlink} hard links"
    return _owner_problem(status, uid)


def _check_file(status: os.stat_result, shown: str, uid: int) -> None:
    problem = file_problem(status, uid)
    if problem is not None:
        raise Refused(shown, problem)


def stat_entry(dir_fd: int, name: str) -> os.stat_result:
    """The entry ``name`` itself (a link is not followed); a look before an open."""
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def open_dir(dir_fd: int, name: str, shown: str, uid: int) -> int:
    """The directory ``name`` in ``dir_fd``, not through a link, owned by ``uid``
    or root; a descriptor the caller closes."""
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW and O_DIRECTORY said no
            raise Refused(shown, _not_a_directory(dir_fd, name)) from err
        raise
    problem = _owner_problem(os.fstat(fd), uid)
    if problem is not None:
        os.close(fd)
        raise Refused(shown, problem)
    return fd


def _not_a_directory(dir_fd: int, name: str) -> str:
    try:
        mode = stat_entry(dir_fd, name).st_mode
    except OSError:
        return "it is not a directory"
    if stat.S_ISLNK(mode):
        return "it is a symbolic link"
    return f"it is {_kind(mode)}, not a directory"


def _sealed(status: os.stat_result) -> bool:
    """A directory only root can change: its links are the administrator's."""
    return status.st_uid == 0 and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_home(root: Path, home: str, uid: int) -> int:
    """The home directory ``home`` (as the guest names it; under ``root``, the
    system root, which is the agent's own), a descriptor the caller closes.

    Its path comes from the administrator, but may cross places others can
    write: a symbolic link on the way is followed only in a directory only root
    can change, and every directory on the way belongs to root or the user.
    """
    path = posixpath.normpath(posixpath.join("/", home))
    for _ in range(MAX_LINKS + 1):
        fd = os.open(root, _DIRECTORY)
        try:
            walked = "/"
            parts = [part for part in path.split("/") if part]
            for index, name in enumerate(parts):
                here = posixpath.join(walked, name)
                if stat.S_ISLNK(stat_entry(fd, name).st_mode):
                    if not _sealed(os.fstat(fd)):
                        raise Refused(here, "it is a symbolic link in a directory others can write")
                    target = os.readlink(name, dir_fd=fd)
                    path = posixpath.normpath(posixpath.join(walked, target, *parts[index + 1 :]))
                    break
                child = open_dir(fd, name, here, uid)
                os.close(fd)
                fd, walked = child, here
            else:
                home_fd, fd = fd, -1
                return home_fd
        finally:
            if fd >= 0:
                os.close(fd)
    raise Refused(home, "too many levels of symbolic links")


def make_dir(dir_fd: int, name: str, mode: int, shown: str, uid: int, gid: int) -> int:
    """Create the directory ``name`` with ``mode``, owned by ``uid``:``gid``; a
    descriptor of it. One made meanwhile by someone else is used if it passes
    :func:`open_dir`'s checks (it is then left as it is)."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        return open_dir(dir_fd, name, shown, uid)
    fd = open_dir(dir_fd, name, shown, uid)
    try:
        _own(fd, uid, gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own(fd: int, uid: int, gid: int) -> None:
    """Give what ``fd`` is to ``uid``:``gid`` unless it is theirs already (as it
    is when made with the user's file-system identity)."""
    status = os.fstat(fd)
    if (status.st_uid, status.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)


def read_file(dir_fd: int, name: str, shown: str, uid: int, limit: int) -> bytes | None:
    """The content of the regular file ``name`` (None when there is none), if it
    belongs to ``uid`` or root, has one link, and holds at most ``limit`` bytes."""
    try:
        _check_file(stat_entry(dir_fd, name), shown, uid)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise Refused(shown, "it is a symbolic link") from err
        raise
    chunks: list[bytes] = []
    size = 0
    try:
        _check_file(os.fstat(fd), shown, uid)
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise Refused(shown, f"it is larger than {limit} bytes")
    return b"".join(chunks)


def replace_file(
    path: str | Path,
    data: bytes,
    *,
    durable: bool,
    dir_fd: int | None = None,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Put a new file holding ``data`` in place of ``path`` (relative to
    ``dir_fd`` when given, as for ``os.open``); the one way the agent replaces
    a file, its own or a user's.

    The new file is made under a random name beside ``path`` (``O_EXCL``,
    ``O_NOFOLLOW``: never something planted there), given ``mode`` and
    ``owner`` (uid, gid; None: the agent's), written whole and renamed over
    ``path``, which is never opened: a link or FIFO planted under the name is
    replaced, not followed. A reader sees the old content or the new, never
    part of one.

    ``durable``: the new content is on disk when the call returns (the file is
    synced before the rename, the directory after it). Without it a crash of
    the guest may leave the old content, the new, or an empty file (a rename
    that reached the disk before the data). Each caller decides:

    - ``~/.ssh/authorized_keys`` (``agent.handlers.accounts``): durable. The host
      was told the keys are in place; losing them in a crash, or finding the
      file empty, can lock the host out. The commands are rare: the syncs cost
      nothing that matters.
    - the handle counter ``qga.state`` (``agent.core.store``): not durable. It is
      saved at every guest-file-open, where syncs would cost more than the open
      itself; no handle outlives a guest crash, an empty or damaged file is
      recovered from the clock, and qemu-ga does not sync it either (its
      default directory, /var/run, does not even survive a reboot).
    - the plugin record (``agent.core.plugin_record``): not durable. It is a
      cache, rebuilt when lost or damaged.
    """
    head, name = os.path.split(os.fspath(path))
    temporary = os.path.join(head, f".{name}.{secrets.token_hex(6)}")
    try:
        fd = os.open(temporary, _CREATE, mode, dir_fd=dir_fd)
        try:
            if owner is not None:
                _own(fd, *owner)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    if durable:
        _sync_dir(head or ".", dir_fd)


def _sync_dir(path: str, dir_fd: int | None) -> None:
    """Make a rename in the directory ``path`` (relative to ``dir_fd``) durable."""
    fd = os.open(path, _DIRECTORY, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
