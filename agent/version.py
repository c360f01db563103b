"""The agent's version, reported by -V and guest-info."""

VERSION = "0.1.0"
