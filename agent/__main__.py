"""``python -m agent``: the same as the ``trio-qga`` command."""

import sys

from agent.cli import main

sys.exit(main())
