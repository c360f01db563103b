"""Made-up guest data that tests and their comparisons with qemu-ga share."""

from __future__ import annotations

# ------------------------------------------------------------ os-release --
# The cases of QEMU's tests/unit/test-qga.c (test_qga_guest_get_osinfo), in a
# file of our own with the same kinds of quoting.
OS_RELEASE = """\
# a comment, then the fields qemu-ga reports
ID=trio-qga-test
NAME=TRIO-QGA
PRETTY_NAME="trio-qga os-release test"
VERSION="Test 2"
VERSION_ID=2
VARIANT="Quoting \\"\\'\\$\\`\\\\ and \\\\\\\\ done."
VARIANT_ID=quoting-test
"""
OS_RELEASE_EXPECTED = {
    "id": "trio-qga-test",
    "name": "TRIO-QGA",
    "pretty-name": "trio-qga os-release test",
    "version": "Test 2",
    "version-id": "2",
    "variant": "Quoting \"'$`\\ and \\\\ done.",
    "variant-id": "quoting-test",
}

# ---------------------------------------------------------------- ssh keys --
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@host"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo two@host"
# What `virsh set-user-sshkeys DOM USER [--remove] --file key.pub` sends: virsh
# splits the file on newlines, and a .pub file ends with one.
VIRSH_KEYS = [KEY2, ""]
