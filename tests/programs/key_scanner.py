"""Inside the container, with the API key on stdin: submit an envelope and an operator
message, and meanwhile look at every process in a relay-*.service cgroup (the conversation
service and both handlers), printing what each had in its environment and command line as
JSON. It never prints the key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

UNIT = re.compile(rb"/system\.slice/(relay-[^/\s]+\.service)")
WANTED = ("relay serve", "relay intake queue", "relay intake jc")


def scan(key: bytes, seen: dict[tuple[str, bytes], dict[str, Any]]) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cgroup", "rb") as f:
                unit = UNIT.search(f.read())
            if unit is None:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if (pid, cmd) in seen:  # a PID is seen again after exec() ("(relay)" -> relay)
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        seen[(pid, cmd)] = {
            "pid": int(pid),
            "unit": unit[1].decode(),
            "cmdline": cmd.replace(b"\0", b" ").decode(errors="replace").strip(),
            "key_in_environ": key in env,
            "key_in_cmdline": key in cmd,
            "environ_names": sorted(v.split(b"=", 1)[0].decode() for v in env.split(b"\0") if v),
        }


def main() -> int:
    key = sys.stdin.buffer.read().strip()
    seen: dict[tuple[str, bytes], dict[str, Any]] = {}
    scan(key, seen)
    subprocess.run(
        ["relay", "submit", "--session", "session-1", "-"],
        input=b"is it safe?",
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["relay", "reply", "@session-2: and this?"], check=True)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        scan(key, seen)
        if all(any(w in p["cmdline"] for p in seen.values()) for w in WANTED):
            break
        time.sleep(0.003)
    print(json.dumps(list(seen.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
