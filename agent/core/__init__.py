"""The agent's core: configuration, the command registry, the policy, the
dispatcher, the session loop, the session store of file handles, plugins, and
the :class:`~agent.core.agent.Agent` that holds them and runs.

Data flows one way: a transport's stream -> ``session`` (frames with
``agent.wire``) -> ``dispatch`` (validates with ``agent.models``, runs the
handler in a cancel scope) -> the reply back through the session. The core
loads the handlers by name (``agent.core.agent.BUILTIN_HANDLERS``), as it
loads plugins: they sit above it.
"""
