"""One of many processes racing for a session's reply (tests/test_cc_mailbox.py): waits for a
line on stdin, tries to take the reply, prints "took" or "no", then holds what it took until
stdin closes. Needs relay importable (run it with the venv's python).

    mailbox_taker.py DATA_ROOT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from relay.cc.identity import process
from relay.cc.mailbox import Mailbox
from relay.layout import Layout


def main(argv: list[str]) -> int:
    box = Mailbox(Layout(Path(argv[1])), "session-1")
    me = process(os.getpid())
    assert me is not None
    sys.stdin.readline()
    print("took" if box.take(me, None) else "no", flush=True)
    sys.stdin.read()  # stay alive, holding what we took, until all have tried
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
