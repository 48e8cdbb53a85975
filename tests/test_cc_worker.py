"""The worker's own bookkeeping, without a claude (the end-to-end tests run the real one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from relay.cc.identity import Process
from relay.cc.mailbox import Mailbox
from relay.cc.worker import Worker
from relay.config import load_config
from relay.layout import Layout
from tests.relayproc import write_config


def test_a_restarted_worker_submits_its_predecessor_s_result_once_and_consumes_its_reply(
    tmp_path: Path,
) -> None:
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9"))
    layout = Layout(config.data_dir)
    layout.ensure_all(config.sessions)
    environ = {"HOME": str(tmp_path / "home")}
    # The reply the first worker took (it died since) and the result it had captured.
    tmp = layout.session_dir("session-1") / ".incoming"
    tmp.write_text("do the thing")
    os.rename(tmp, layout.input_file("session-1"))
    reply = Mailbox(layout, "session-1").take(Process(os.getpid(), -1), None)
    assert reply is not None
    first = Worker(config, "session-1", claude="/bin/false", claude_args=[], environ=environ)
    first.state.cc_session = "conversation-1"
    first.state.unsent = {"id": "cc-result-1", "text": "the thing is done", "tag": reply.tag}
    first.state.save()

    second = Worker(config, "session-1", claude="/bin/false", claude_args=[], environ=environ)
    assert second.state.cc_session == "conversation-1"  # it resumes that conversation
    second._finish_unsent()
    envelopes = [json.loads(p.read_text()) for p in layout.queue.glob("*.json")]
    assert [(e["id"], e["content"]) for e in envelopes] == [("cc-result-1", "the thing is done")]
    assert not layout.input_file("session-1").exists()  # not offered to it again
    assert second.state.unsent is None
    assert json.loads(second.state.path.read_text())["unsent"] is None
