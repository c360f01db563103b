"""The host side: the client of the guest agent protocol (ours or qemu-ga), its
libvirt channel, many guests at once (``fleet``) on many hosts (``inventory``: which
hosts and domains; ``hosts``: their connections), ``run`` (``execution``,
``run_command``) and the ``trio-qga-client`` command (``cli``, its subcommands'
``operations``, ``fleet_command`` over many domains, ``output``).

Nothing on the guest side imports it, and it imports nothing of the guest
agent but the wire protocol and the schema's models.
"""
