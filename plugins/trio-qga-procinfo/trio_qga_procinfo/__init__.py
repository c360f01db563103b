"""trio-qga-procinfo: process and service status for hosts, as a trio-qga plugin.

``guest-x-process-list`` lists guest processes (optionally those of one name)
with their state, owner, CPU time and resident memory; ``guest-x-service-status``
reports a systemd unit's load, active and sub state. Together they let a host
check that a service in the guest is up without guest-exec.
"""

from __future__ import annotations

from pathlib import Path

from agent.core.plugins import Plugin
from trio_qga_procinfo.handlers import handlers

plugin = Plugin.from_schema_file(
    Path(__file__).with_name("schema.json"),
    handlers,
    description="process list and systemd service status",
)
