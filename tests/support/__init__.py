"""What the tests share. Test modules import from here, never from each other
(``tests/test_suite_layout.py``).

Agents and clients
  agents           ``agent_factory`` (the one way a test builds an agent), ``served``,
                   ``session``: agents in this process, on memory streams
  processes        ``spawn_agent`` (the one way a test starts trio-qga as a process),
                   ``running_agent``, ``run_agent``, ``run_client``, waiting on them
  clients          ``StreamClient`` (trio stream), ``SocketClient`` (unix socket)
  reference        the real qemu-ga, run the same way as ours
  fake_hosts       libvirt hosts and guests in this process, for trio-qga-client's
                   fleets: hosts down or hung, guests slow or refusing a freeze
  exchange_checks  what every ``ExchangeStream`` must do

Stand-ins for the guest, harmless to this machine
  system_fakes     recording executor, fake clock, scratch system root
  fsfreeze_fakes   recording ioctls and mount tables of made-up paths
  fake_sys         a scratch /sys with block devices
  guest_data       an os-release and ssh keys shared with the qemu-ga comparisons
  exec_programs    programs the exec tests run
  scratch          ext4, xfs, tmpfs and bind mounts the fsfreeze tests may freeze
  scratch_user     a real user with a home under the test's directory
  hung_mounts      FUSE mounts that hang on command (``hungfs.py``), in their own
                   mount namespace

VMs and libvirt (the VMs are the launcher's, ``agent.host.vm``: docs/vm.md)
  vm               a VM for agents under test, programs started in a guest, the host's
                   end of a guest port, the installed agent
  libvirt_host     libvirt's daemons of our own, and throw-away domains that boot the
                   launcher's kernel, initramfs and guest init
  fleet_hosts      two libvirt daemons and three domains, for trio-qga-client's fleets
  vm_guest.py, vm_qe_guest.py, vm_local_client.py, libvirt-guest: what the guests run;
  vm_package_guest.py: the packaging test's steps in a systemd guest

release            ``release``: the wheel, sdist and .deb scripts/build-deb makes, once
                   a session, for the packaging build test and the packaging VM test

markdown           the README's and docs' code blocks, notes, links and tables, as
                   ``test_docs.py`` and ``test_docs_examples.py`` check them
markers            the ``qemu_ga``, ``vm`` and ``libvirt`` markers, checked where the
                   helpers above (and the ``qga_vm`` fixtures) do what they name
default_paths      fails the test, and the session, that touches the agent's default
                   paths on this machine (/var/cache/trio-qga, /run/qga.state*, ...)
"""

from __future__ import annotations

import pytest

# The helpers' asserts explain themselves as the tests' do.
pytest.register_assert_rewrite("tests.support")

# The modules with fixtures or hooks, registered by the root conftest.py through this list.
pytest_plugins = [
    "tests.support.default_paths",
    "tests.support.agents",
    "tests.support.markers",
    "tests.support.scratch",
    "tests.support.reference",
    "tests.support.scratch_user",
    "tests.support.hung_mounts",
    "tests.support.fsfreeze_fakes",
    "tests.support.release",
]
