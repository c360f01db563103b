"""guest-set-user-password and the guest-ssh-*-authorized-keys commands.

Passwords go to ``chpasswd`` (``-e`` when already crypted) through
``ctx.executor``, as qemu-ga does; the password travels on its stdin, never in
an argument. Authorized keys live in ``~user/.ssh/authorized_keys`` under
``ctx.root``: a missing ``.ssh`` is created 0700 and owned by the user, and the
file is replaced atomically by a new one that is 0600 and owned by the user
before it takes the old one's place. User accounts come from the system
(``pwd``) or, under a custom root, from that root's ``/etc/passwd``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path

from agent.context import AgentContext
from agent.errors import GenericError, os_error_text
from agent.registry import HandlerSet
from agent.system import SystemRoot, describe_failure
from agent.wire_base64 import decode_base64

handlers = HandlerSet()

AUTHORIZED_KEYS = "authorized_keys"


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


def lookup_user(root: SystemRoot, name: str) -> Account:
    """The account ``name``: from NSS for the real root, else the root's /etc/passwd."""
    if root.root == Path("/"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is not None:
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
    else:
        try:
            lines = root.path("/etc/passwd").read_text().splitlines()
        except OSError as err:
            raise GenericError(f"failed to lookup user '{name}': {os_error_text(err)}") from err
        for line in lines:
            fields = line.split(":")
            if len(fields) >= 7 and fields[0] == name:
                return Account(name, int(fields[2]), int(fields[3]), fields[5])
    raise GenericError(f"failed to lookup user '{name}': no such user")


# --- authorized keys ---------------------------------------------------------------


def _check_keys(keys: list[str]) -> None:
    """qemu-ga's sanity check (one line, not a comment), and not empty."""
    for key in keys:
        if not key or key.startswith("#") or "\n" in key:
            raise GenericError(f"invalid OpenSSH public key: '{key}'")


@dataclass(frozen=True)
class KeysFile:
    account: Account
    ssh_dir: Path  # under the root
    path: Path  # under the root
    shown: str  # the file as the guest names it, for messages

    @classmethod
    def of(cls, ctx: AgentContext, username: str) -> KeysFile:
        account = lookup_user(ctx.root, username)
        ssh_dir = ctx.root.path(account.home) / ".ssh"
        shown = os.path.join(account.home, ".ssh", AUTHORIZED_KEYS)
        return cls(account, ssh_dir, ssh_dir / AUTHORIZED_KEYS, shown)

    def read_lines(self) -> list[str]:
        try:
            text = self.path.read_bytes().decode(errors="surrogateescape")
        except OSError as err:
            raise GenericError(
                f"failed to read '{self.shown}': Failed to open file"
                f" \u201c{self.shown}\u201d: {os_error_text(err)}"
            ) from err
        return text.splitlines()

    def make_ssh_dir(self) -> None:
        """Create ``~/.ssh`` 0700, owned by the user (an existing one is left alone)."""
        if self.ssh_dir.is_dir():
            return
        shown = os.path.dirname(self.shown)
        try:
            os.mkdir(self.ssh_dir, 0o700)
        except OSError as err:
            raise GenericError(
                f"failed to create directory '{shown}': {os_error_text(err)}"
            ) from err
        try:
            os.chown(self.ssh_dir, self.account.uid, self.account.gid)
        except OSError as err:
            raise GenericError(
                f"failed to set ownership of directory '{shown}': {os_error_text(err)}"
            ) from err
        try:
            os.chmod(self.ssh_dir, 0o700)
        except OSError as err:
            raise GenericError(
                f"failed to set permissions of directory '{shown}': {os_error_text(err)}"
            ) from err

    def write_lines(self, lines: list[str]) -> None:
        """Replace the file with ``lines``: a new file, 0600 and the user's before the
        rename, so the keys are never readable by others nor half written."""
        data = "".join(line + "\n" for line in lines).encode(errors="surrogateescape")
        try:
            # Not through a symlink planted as ~/.ssh: the user owns the home.
            dir_fd = os.open(self.ssh_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as err:
            raise GenericError(f"failed to write to '{self.shown}': {os_error_text(err)}") from err
        temporary = f".{AUTHORIZED_KEYS}.{secrets.token_hex(6)}"
        try:
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                os.fchown(fd, self.account.uid, self.account.gid)
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, AUTHORIZED_KEYS, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise GenericError(f"failed to write to '{self.shown}': {os_error_text(err)}") from err
        finally:
            os.close(dir_fd)


@handlers.command("guest-ssh-get-authorized-keys")
def guest_ssh_get_authorized_keys(ctx: AgentContext, username: str) -> dict[str, object]:
    keys_file = KeysFile.of(ctx, username)
    keys = [line.strip() for line in keys_file.read_lines()]
    return {"keys": [key for key in keys if key and not key.startswith("#")]}


@handlers.command("guest-ssh-add-authorized-keys")
def guest_ssh_add_authorized_keys(
    ctx: AgentContext, username: str, keys: list[str], reset: bool | None
) -> dict[str, object]:
    _check_keys(keys)
    keys_file = KeysFile.of(ctx, username)
    lines: list[str] | None = None
    if not reset:
        with contextlib.suppress(GenericError):  # none yet: start a new file
            lines = keys_file.read_lines()
    if lines is None:
        lines = []
        keys_file.make_ssh_dir()
    for key in keys:
        if key not in lines:
            lines.append(key)
    keys_file.write_lines(lines)
    return {}


@handlers.command("guest-ssh-remove-authorized-keys")
def guest_ssh_remove_authorized_keys(
    ctx: AgentContext, username: str, keys: list[str]
) -> dict[str, object]:
    _check_keys(keys)
    keys_file = KeysFile.of(ctx, username)
    if not os.path.lexists(keys_file.path):
        return {}
    unwanted = set(keys)
    keys_file.write_lines([line for line in keys_file.read_lines() if line not in unwanted])
    return {}
