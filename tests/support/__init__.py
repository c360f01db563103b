"""What the tests share; no test module imports another (``tests/test_suite_layout.py``)."""

from __future__ import annotations

# The modules that hold fixtures, registered by the root conftest.py through this list.
pytest_plugins = [
    "tests.agents",
    "tests.scratch",
    "tests.reference",
    "tests.scratch_user",
    "tests.hung_mounts",
    "tests.fsfreeze_fakes",
]
