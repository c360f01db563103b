"""The example of docs/vm.md, run by the suite so that it cannot drift (the document
marks it an excerpt of this file, which tests/test_docs.py checks): a test that only
a VM can run."""

import pytest

from agent.host.vm.background import BackgroundVm

pytestmark = pytest.mark.vm


@pytest.mark.qga_vm(modules=["dummy"])
def test_a_dummy_network_device(qga_vm: BackgroundVm) -> None:
    # The guest's kernel loads the dummy module on demand: here, not on the host.
    qga_vm.run(["ip", "link", "add", "test0", "type", "dummy"])
    qga_vm.run(["ip", "addr", "add", "192.0.2.1/24", "dev", "test0"])
    qga_vm.run(["ip", "link", "set", "test0", "up"])
    shown = qga_vm.run(["ip", "-brief", "address", "show", "test0"])
    assert b"192.0.2.1/24" in shown.stdout
    assert qga_vm.read_file("/sys/module/dummy/initstate") == b"live\n"
