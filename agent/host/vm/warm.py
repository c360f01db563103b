"""The guest's page cache warmed with the files its agent starts from.

In a fresh boot, trio-qga's first start reads every module it imports cold over
9p: 6.5 s from its spawn to its first reply in a fresh TCG guest, against 5.1 s
for the next starts in the same guest (docs/vm.md, "Where a boot's time goes").
So the launcher lists those files (the interpreter, its shared libraries, the
compiled modules, in the order they are imported), keeps the list in the
guest's cache directory, and the guest init reads them ahead on the other CPU
while the agent starts: the agent's reads find them in the page cache. Measured
with ``boot_vm`` then ``run -- true``, alternating boots with and without
(quiet 2-core host), three runs: ``run`` ended sooner in 16 of 21 rounds, by
0.05 to 0.7 s in the medians (6.6 against 7.3 s in the first run). Started
earlier, from the initramfs beside the init's own work, it was 0.4 s slower.
A stale list costs nothing but the reading; a file gone from it is skipped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LIST = "warm-files"  # in the guest's cache directory (guest_cache.py)
# Files larger than this are left to the page faults of whoever maps them: the
# interpreter's library (23 MB here) is mapped and touched in part, and reading
# it whole over 9p would hold up the modules behind it in the list.
BIGGEST = 1024 * 1024
# Run by the guest's Python on the host: what a first answer on virtio-serial
# imports, and a first ``run`` after it.
LISTING = """\
import importlib.util, os, sys
BIGGEST = {biggest}
import agent.core.agent, agent.daemon.cli, agent.transports.virtio
import agent.handlers.core, agent.handlers.stream_exec  # the first answer's, the first run's
files = [os.path.realpath(sys.executable)]
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if path.startswith("/") and ".so" in path:
        files.append(path)
for module in list(sys.modules.values()):
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    if not origin or not origin.startswith("/"):
        continue
    if origin.endswith(".py"):
        cached = importlib.util.cache_from_source(origin)
        origin = cached if os.path.exists(cached) else origin
    files.append(origin)
small = [path for path in dict.fromkeys(files) if os.path.getsize(path) <= BIGGEST]
print("\\n".join(small))
"""


def refresh(python: str, target: Path) -> None:
    """The list for ``python`` at ``target``, made again when the agent's tree or the
    interpreter changed since it was made (its first line says which)."""
    stamp = f"# {python} {_newest_source()}\n"
    try:
        with open(target) as existing:
            if existing.readline() == stamp:
                return
    except OSError:
        pass
    listed = subprocess.run(
        [python, "-c", LISTING.format(biggest=BIGGEST)],
        cwd="/",  # as the guest's agent runs: its imports, not this directory's
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    fresh = target.with_name(f".{target.name}.{os.getpid()}")
    fresh.write_text(stamp + listed)
    fresh.replace(target)  # another launcher may read it at any time


def _newest_source() -> int:
    """The newest modification time (ns) in the agent's package."""
    package = Path(__file__).resolve().parents[2]  # agent/
    return max(
        (entry.stat().st_mtime_ns for entry in package.rglob("*.py")),
        default=0,
    )
