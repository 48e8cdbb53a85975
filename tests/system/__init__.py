"""System tests: a real systemd 252 booted in systemd-nspawn (see nspawn.py)."""
