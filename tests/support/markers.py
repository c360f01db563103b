"""The suite's markers, held to what they claim: a test that runs the real
qemu-ga, boots a VM or starts libvirt carries the marker (``pyproject.toml``
registers them), so that ``-m`` selects what it says. The helpers that do these
things call :func:`require_marker`, and so does the setup of a test that asks for
one of the pytest plugin's VM fixtures (``qga_vm``, ``qga_vm_factory``); a test that
reaches one without its marker fails, naming the marker to add. A ``vm`` or
``libvirt`` test is ``slow`` as well, so that no VM boots in the fast tier; otherwise
``slow`` is measured, not checked here (``docs/testing.md``)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

_running: list[pytest.Item] = []  # the test being run, from its setup to its teardown
VM_FIXTURES = frozenset({"qga_vm", "qga_vm_factory"})  # agent/testing.py's: they boot VMs


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("vm") or item.get_closest_marker("libvirt"):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if VM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        require_marker("vm")


def require_marker(name: str) -> None:
    """Fail the running test unless it (or its module) is marked ``name``; outside
    a test (a benchmark), nothing."""
    if _running and _running[-1].get_closest_marker(name) is None:
        pytest.fail(
            f"{_running[-1].nodeid} needs the marker {name!r} "
            f"(pytestmark = pytest.mark.{name}): what it does is what -m {name} selects",
            pytrace=False,
        )
