"""A test run that boots a container and waits to be SIGKILLed: prints the container's
state directory and nspawn's PID, then sleeps.

    booted_then_killed.py REPOSITORY_ROOT
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    sys.path.insert(0, argv[1])
    from tests.system.nspawn import Container

    c = Container()
    c.boot()
    assert c._proc is not None
    print(c.base, c._proc.pid, flush=True)
    time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
