"""guest-set-user-password and the guest-ssh-*-authorized-keys commands.

Passwords go to ``chpasswd`` (``-e`` when already crypted) through
``ctx.executor``, as qemu-ga does; the password travels on its stdin, never in
an argument, and never in a log line or an error text.

Authorized keys live in ``~user/.ssh/authorized_keys`` under ``ctx.root``, in
a directory the user controls: the work is done by the agent's runner
(``ctx.fs``, ``agent.system.fsguard``) in a thread of its own with the user's
file-system identity (``agent.system.fsidentity``), from directory
descriptors, refusing links, FIFOs, devices and hard links the user may have
planted (``agent.system.userfiles``), within :data:`USER_FILES_TIMEOUT`. A missing
``.ssh`` is created 0700 and the file is replaced atomically by a new one that
is 0600, both the user's. User accounts come from the system (``pwd``, in that
thread: NSS may ask the network) or, under a custom root, from that root's
``/etc/passwd``.
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.core.context import AgentContext
from agent.core.registry import HandlerSet
from agent.errors import GenericError, os_error_text
from agent.system import userfiles
from agent.system.executor import SystemRoot, describe_failure
from agent.system.fsguard import FsTimeout
from agent.system.fsidentity import Identity, acting_as
from agent.system.userfiles import Refused
from agent.wire.b64 import decode_base64

handlers = HandlerSet()

AUTHORIZED_KEYS = "authorized_keys"
SSH_DIR = ".ssh"
KEYS_FILE_LIMIT = 4 * 1024 * 1024  # bytes; a bigger authorized_keys is refused
USER_FILES_TIMEOUT = 30.0  # seconds an ssh key command may take in a user's home

_T = TypeVar("_T")


# --- passwords ---------------------------------------------------------------------


@handlers.command("guest-set-user-password")
async def guest_set_user_password(
    ctx: AgentContext, username: str, password: str, crypted: bool
) -> dict[str, object]:
    raw = decode_base64(password)
    if b"\n" in raw or b"\0" in raw:
        raise GenericError("forbidden characters in raw password")
    if "\n" in username or ":" in username or "\0" in username:
        raise GenericError("forbidden characters in username")
    argv = ["chpasswd", "-e"] if crypted else ["chpasswd"]
    try:
        result = await ctx.executor.run(argv, stdin=username.encode() + b":" + raw + b"\n")
    except FileNotFoundError as err:
        raise GenericError("cannot find 'passwd' program in PATH") from err
    except OSError as err:
        raise GenericError(f"failed to create child process, error '{os_error_text(err)}'") from err
    if result.returncode < 0:
        raise GenericError(
            f"child process has terminated abnormally: {describe_failure(argv, result)}"
        )
    if result.returncode:
        raise GenericError(
            f"child process has failed to set user password: {describe_failure(argv, result)}"
        )
    return {}


# --- accounts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str  # as the guest names it
    groups: tuple[int, ...]  # every group the user is in, the primary one included


def lookup_user(root: SystemRoot, name: str) -> Account:
    """The account ``name``: from NSS for the real root, else the root's /etc/passwd
    (whose made-up users are in their primary group only)."""
    if root.root == Path("/"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is not None:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)
    else:
        try:
            lines = root.path("/etc/passwd").read_text().splitlines()
        except OSError as err:
            raise GenericError(f"failed to lookup user '{name}': {os_error_text(err)}") from err
        for line in lines:
            fields = line.split(":")
            if len(fields) >= 7 and fields[0] == name:
                uid, gid = int(fields[2]), int(fields[3])
                return Account(name, uid, gid, fields[5], (gid,))
    raise GenericError(f"failed to lookup user '{name}': no such user")


def identity_for(account: Account) -> Identity | None:
    """The file-system identity to take for ``account``'s files; None when the
    agent is not root (it can reach no more than its own files anyway) or the
    account is root."""
    if os.geteuid() != 0 or account.uid == 0:
        return None
    return Identity(account.uid, account.gid, account.groups)


# --- authorized keys ---------------------------------------------------------------


def _wanted_keys(keys: list[str]) -> list[str]:
    """The keys to add or remove: qemu-ga's sanity check (one line, not a comment),
    and empty ones skipped (virsh sends one after the last line of a ``.pub``
    file). The error names the key by its place: a key never goes into a text
    that may be logged."""
    for index, key in enumerate(keys):
        if key.startswith("#"):
            raise GenericError(f"invalid OpenSSH public key: keys[{index}] is a comment")
        if "\n" in key:
            raise GenericError(f"invalid OpenSSH public key: keys[{index}] has a line break")
    return [key for key in keys if key]


class KeysFile:
    """``~user/.ssh/authorized_keys``, reached from the home's descriptor; ``~/.ssh``
    is opened once, so a read and the write after it are in the same directory."""

    def __init__(self, account: Account, home_fd: int) -> None:
        self.account = account
        self.home_fd = home_fd
        self.shown_dir = os.path.join(account.home, SSH_DIR)
        self.shown = os.path.join(self.shown_dir, AUTHORIZED_KEYS)
        self._dir_fd: int | None = None

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _existing_ssh_dir(self) -> int | None:
        """``~/.ssh``'s descriptor; None when there is none."""
        if self._dir_fd is None:
            try:
                self._dir_fd = userfiles.open_dir(
                    self.home_fd, SSH_DIR, self.shown_dir, self.account.uid
                )
            except FileNotFoundError:
                return None
        return self._dir_fd

    def _ssh_dir(self) -> int:
        """``~/.ssh``'s descriptor, made 0700 and the user's when there was none."""
        existing = self._existing_ssh_dir()
        if existing is not None:
            return existing
        uid, gid = self.account.uid, self.account.gid
        self._dir_fd = userfiles.make_dir(self.home_fd, SSH_DIR, 0o700, self.shown_dir, uid, gid)
        return self._dir_fd

    def read_lines(self) -> list[str] | None:
        """The file's lines; None when there is no file."""
        try:
            dir_fd = self._existing_ssh_dir()
            if dir_fd is None:
                return None
            data = userfiles.read_file(
                dir_fd, AUTHORIZED_KEYS, self.shown, self.account.uid, KEYS_FILE_LIMIT
            )
        except OSError as err:
            raise GenericError(
                f"failed to read '{self.shown}': Failed to open file"
                f" \u201c{self.shown}\u201d: {os_error_text(err)}"
            ) from err
        return None if data is None else data.decode(errors="surrogateescape").splitlines()

    def write_lines(self, lines: list[str]) -> None:
        """Replace the file with ``lines`` (creating ``~/.ssh`` 0700 if needed); the
        new file is 0600 and the user's before it takes the old one's place."""
        try:
            dir_fd = self._ssh_dir()
        except OSError as err:
            raise GenericError(
                f"failed to create directory '{self.shown_dir}': {os_error_text(err)}"
            ) from err
        data = "".join(line + "\n" for line in lines).encode(errors="surrogateescape")
        uid, gid = self.account.uid, self.account.gid
        try:
            userfiles.replace_file(
                AUTHORIZED_KEYS, data, dir_fd=dir_fd, mode=0o600, owner=(uid, gid), durable=True
            )
        except OSError as err:
            raise GenericError(f"failed to write to '{self.shown}': {os_error_text(err)}") from err


@contextmanager
def _opened_keys_file(root: SystemRoot, username: str) -> Iterator[KeysFile]:
    """The user's keys file, with this thread acting as the user from the home on."""
    account = lookup_user(root, username)
    try:
        home_fd = userfiles.open_home(root.root, account.home, account.uid)
    except OSError as err:
        raise GenericError(
            f"failed to open home directory '{account.home}': {os_error_text(err)}"
        ) from err
    keys_file = KeysFile(account, home_fd)
    try:
        identity = identity_for(account)
        with nullcontext() if identity is None else acting_as(identity):
            yield keys_file
    finally:
        keys_file.close()
        os.close(home_fd)


async def _in_home(
    ctx: AgentContext, command: str, username: str, work: Callable[[KeysFile], _T]
) -> _T:
    """``work`` on the user's keys file, off the event loop and within
    :data:`USER_FILES_TIMEOUT`; planted entries are refused with their name.

    No mount is named to the runner, so none is remembered as hung: the home
    may lie on another mount than its path shows (a link the administrator
    made), and marking the wrong one would fail every call on it.
    """

    def job() -> _T:
        try:
            with _opened_keys_file(ctx.root, username) as keys_file:
                return work(keys_file)
        except Refused as err:
            raise GenericError(str(err)) from err

    try:
        return await ctx.fs.call(
            None, job, limit=USER_FILES_TIMEOUT, own_thread=f"{command} {username}"
        )
    except FsTimeout as err:
        if err.fast:  # too many calls stuck, or no thread free
            raise GenericError(f"{command} for user '{username}': {err}") from err
        raise GenericError(
            f"{command} for user '{username}' did not finish within {USER_FILES_TIMEOUT:g} s"
        ) from err


@handlers.command("guest-ssh-get-authorized-keys")
async def guest_ssh_get_authorized_keys(ctx: AgentContext, username: str) -> dict[str, object]:
    def get(keys_file: KeysFile) -> list[str]:
        lines = keys_file.read_lines()
        if lines is None:
            raise GenericError(
                f"failed to read '{keys_file.shown}': Failed to open file"
                f" \u201c{keys_file.shown}\u201d: {os.strerror(errno.ENOENT)}"
            )
        return lines

    lines = await _in_home(ctx, "guest-ssh-get-authorized-keys", username, get)
    keys = [line.strip() for line in lines]
    return {"keys": [key for key in keys if key and not key.startswith("#")]}


@handlers.command("guest-ssh-add-authorized-keys")
async def guest_ssh_add_authorized_keys(
    ctx: AgentContext, username: str, keys: list[str], reset: bool | None
) -> dict[str, object]:
    wanted = _wanted_keys(keys)

    def add(keys_file: KeysFile) -> None:
        lines = ([] if reset else keys_file.read_lines()) or []
        for key in wanted:
            if key not in lines:
                lines.append(key)
        keys_file.write_lines(lines)

    await _in_home(ctx, "guest-ssh-add-authorized-keys", username, add)
    return {}


@handlers.command("guest-ssh-remove-authorized-keys")
async def guest_ssh_remove_authorized_keys(
    ctx: AgentContext, username: str, keys: list[str]
) -> dict[str, object]:
    unwanted = set(_wanted_keys(keys))

    def remove(keys_file: KeysFile) -> None:
        lines = keys_file.read_lines()
        if lines is not None:  # no file: nothing to remove
            keys_file.write_lines([line for line in lines if line not in unwanted])

    await _in_home(ctx, "guest-ssh-remove-authorized-keys", username, remove)
    return {}
