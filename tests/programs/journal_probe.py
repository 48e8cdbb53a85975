"""A stdlib-only sender for journald's native protocol (no python3-systemd needed): one entry
with FOO=argv[1], then a line on stdout.

    journal_probe.py TOKEN
"""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> int:
    fields = {"MESSAGE": "harness probe", "SYSLOG_IDENTIFIER": "harness-probe", "FOO": argv[1]}
    payload = "".join(f"{k}={v}\n" for k, v in fields.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(payload, "/run/systemd/journal/socket")
    print("stdout line", argv[1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
