"""The suite's markers select what they say (``tests/support/markers.py``): a VM or
libvirt test is never in the fast tier, and a test that reaches qemu-ga, a VM or
libvirt without its marker fails."""

from __future__ import annotations

import pytest

from tests.support.reference import qemu_ga_binary

pytest_plugins = ["pytester"]


def test_a_vm_or_libvirt_test_is_slow_too(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    slow\n    vm\n    libvirt\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.vm
        def test_boots_a_vm():
            pass

        @pytest.mark.libvirt
        def test_starts_libvirt():
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "tests.support.markers", "-m", "not slow")
    result.assert_outcomes(passed=1, deselected=2)


def test_an_unmarked_test_that_runs_qemu_ga_fails_naming_the_marker() -> None:
    with pytest.raises(pytest.fail.Exception, match="needs the marker 'qemu_ga'"):
        qemu_ga_binary()


def test_the_check_reads_the_running_test_s_markers(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    qemu_ga\n")
    pytester.makepyfile(
        """
        import pytest
        from tests.support.markers import require_marker

        @pytest.mark.qemu_ga
        def test_marked():
            require_marker("qemu_ga")

        def test_unmarked():
            require_marker("qemu_ga")
        """
    )
    result = pytester.runpytest_inprocess("-p", "tests.support.markers")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked needs the marker 'qemu_ga'*"])


def test_a_test_that_asks_for_a_vm_fixture_needs_the_vm_marker(pytester: pytest.Pytester) -> None:
    """Failed in its setup, before the plugin's fixture boots anything."""
    pytester.makeini("[pytest]\nmarkers =\n    vm\n    slow\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="session")
        def qga_vm_factory():
            raise AssertionError("a VM would boot here")

        def test_unmarked(qga_vm_factory):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "tests.support.markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_unmarked needs the marker 'vm'*"])
    result.stdout.no_fnmatch_line("*a VM would boot here*")
