"""The OS layer the handlers call: the guest's system, guarded.

Blocking filesystem calls under deadlines (``fsguard``), the agent's own files
and users' files opened without following what a user planted (``ownfiles``,
``userfiles``, ``fsidentity``), the mount table (``mounts``), the processes of
guest-exec and the streaming exec (``processes``, ``streaming``), fsfreeze
(``fsfreeze``), system information (``sysinfo``), and the seams tests replace
(``executor``: commands, the system root, the clock). Nothing here knows the
wire or the agent's core.
"""
