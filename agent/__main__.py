"""``python -m agent``: the same as the ``trio-qga`` command."""

import sys

from agent.daemon.cli import main

sys.exit(main())
