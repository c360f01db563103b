"""The host side: the client of the guest agent protocol (ours or qemu-ga), its
libvirt channel, many guests at once (``fleet``), ``run`` (``execution``,
``run_command``) and the ``trio-qga-client`` command (``cli``, its subcommands'
``operations``, ``output``).

Nothing on the guest side imports it, and it imports nothing of the guest
agent but the wire protocol and the schema's models.
"""
