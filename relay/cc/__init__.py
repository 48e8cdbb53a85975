"""The Claude Code side of relay: hooks, the installer, the launcher and headless workers.

Nothing here imports `anthropic`: the hooks run on every turn of every session and must
start fast.
"""
