"""What the read-only information commands read from the system, as pure parsers.

Each module turns the text of one kind of system file into wire-shaped values:
``osrelease`` (os-release), ``procfs`` (/proc/stat, /proc/diskstats,
/proc/net/route, /proc/net/ipv6_route) and ``blockdev`` (the /sys tree of block
devices: disk addresses, partitions, dependencies). The handlers in
``agent.handlers`` read the files through the system root and call these, so
the parsers are tested on text and scratch trees rather than on this machine.
"""
