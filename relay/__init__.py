"""relay: carries messages between Claude Code sessions and a coordinating Claude conversation."""

__version__ = "0.1.0"
