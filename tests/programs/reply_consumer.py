"""The Claude Code side of many sessions: take each input.txt as it appears, delete it, and
log it as a JSON line `{"session": ..., "text": ...}`. Runs until it is signalled.

    reply_consumer.py DATA_ROOT LOG SESSION...
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    data, log_path, sessions = argv[1], argv[2], argv[3:]
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        while True:
            idle = True
            for session in sessions:
                path = f"{data}/dispatch/{session}/input.txt"
                try:
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                except FileNotFoundError:
                    continue
                os.unlink(path)
                log.write(json.dumps({"session": session, "text": text}) + "\n")
                idle = False
            if idle:
                time.sleep(0.002)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
