"""The demo behind `scripts/demo`: every step goes through relay's public contract
(queue/ envelopes, dispatch/<session>/input.txt, state/jc_input.txt, `relay status`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(label: str, text: str) -> None:
    body = textwrap.indent(textwrap.fill(text, 88, replace_whitespace=False), "   ")
    print(f"{label}\n{body}", flush=True)


def start_server(script: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [PY, str(ROOT / "tests" / "standin" / script), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def post_json(url: str, payload: Any) -> Any:
    request = urllib.request.Request(
        url,
        json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def wait_push(ntfy_url: str, wanted: Any, timeout: float = 10.0) -> Any:
    """The newest push the stand-in ntfy received that `wanted` accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in get_json(f"{ntfy_url}/_messages") if m["id"] and wanted(m)]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise SystemExit("demo: the expected ntfy push did not come")


def tap(action: Any) -> None:
    """What the phone does for an http button: the action's request, as given."""
    request = urllib.request.Request(
        action["url"], data=action["body"].encode(), method=action.get("method", "POST")
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Demo:
    def __init__(self, work: Path, api_url: str, ntfy_url: str) -> None:
        self.work, self.api_url, self.ntfy_url = work, api_url, ntfy_url
        self.config = work / "config.yaml"
        self.data = work / "data"
        self.config.write_text(
            textwrap.dedent(f"""\
            sessions: [session-1, session-2]
            data_dir: {self.data}
            model: claude-opus-4-7
            anthropic: {{base_url: "{api_url}"}}
            ntfy: {{server: "{ntfy_url}", topic: null}}
            budget: {{daily_usd: 5, monthly_usd: 100}}
            """)
        )
        (work / ".env").write_text("ANTHROPIC_API_KEY=sk-demo-not-a-real-key\n")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ANTHROPIC_API_KEY", "RELAY_CONFIG", "ANTHROPIC_BASE_URL")
        }

    def relay(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [PY, "-m", "relay", *args, "--config", str(self.config)],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
        )
        return done.stdout

    def chat_claude_will_say(self, text: str) -> None:
        post_json(f"{self.api_url}/_script", [{"reply": text}])

    def session_sends(self, session: str, text: str) -> None:
        show(f"-> {session} sends (relay submit):", text)
        self.relay("submit", "--session", session, "-", stdin=text)

    def session_reads(self, session: str, timeout: float = 15) -> str:
        path = self.data / "dispatch" / session / "input.txt"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: nothing arrived for {session}")
            time.sleep(0.02)
        text = path.read_text()
        path.unlink()  # what a Claude Code hook does after reading its input
        show(f"<- {session} reads dispatch/{session}/input.txt (and deletes it):", text)
        return text

    def status(self) -> dict[str, Any]:
        return json.loads((self.data / "state" / "status.json").read_text())

    def wait_state(self, state: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = self.status()
                if current["state"] == state:
                    return current
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: relay did not reach state {state}")
            time.sleep(0.02)


# What the demo's Claude Code "model" says, turn by turn (a stand-in, like chat-Claude's).
CC_TURNS = [
    "Added 14 fuzz cases for the parser's error paths (tests/test_parser_fuzz.py); all pass.",
    "Coverage of parser.py is now 97%; the two lines left are unreachable guards.",
]


def claude_code_worker(demo: Demo, work: Path) -> None:
    """`relay cc worker` with the pinned Claude Code (scripts/setup installs it), offline:
    its model is a stand-in too. Two rounds, then chat-Claude's [RELAY-STOP] ends it."""
    sys.path.insert(0, str(ROOT))
    from tests.claudecode import cc_env, claude_binary, is_side_request, relay_cli, seed_home
    from tests.standin.api import Reply, StandinAPI

    turns = iter(CC_TURNS)

    def model(body: dict[str, Any]) -> Reply:
        return Reply('{"title": "fuzz tests"}') if is_side_request(body) else Reply(next(turns))

    home = work / "home"
    seed_home(home, work)
    demo.chat_claude_will_say("Good. Now run them under coverage and report the numbers.")
    demo.chat_claude_will_say("[RELAY-STOP] Thanks, that is all for today.")
    with StandinAPI(responder=model) as cc_api:
        env = cc_env(home, cc_api.url, RELAY_CLAUDE=str(claude_binary()))
        env.pop("RELAY_CONFIG", None)
        task = "Add fuzz tests for the parser's error paths."
        show("   $ relay cc worker --session session-1 --task", repr(task))
        command = ["--config", str(demo.config), "cc", "worker", "--session", "session-1"]
        worker = relay_cli(env, *command, "--task", task, cwd=work)
        for line in worker.stderr.splitlines():
            print(f"   | {line}")
        if worker.returncode != 0:
            raise SystemExit(f"demo: relay cc worker exited with {worker.returncode}")
    history = [json.loads(line) for line in (demo.data / "state" / "history.jsonl").open()]
    for record in history[-2:]:
        heard = str(record.get("user", "")).removeprefix("[from session-1]\n")
        show("   session-1's Claude Code told chat-Claude:", heard[:200])
        show("   chat-Claude answered (its next user message):", str(record.get("reply", ""))[:200])


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="relay-demo-"))
    api, api_url = start_server("api.py")
    ntfy, ntfy_url = start_server("ntfy.py")
    demo = Demo(work, api_url, ntfy_url)
    log = open(work / "relay.log", "w")  # noqa: SIM115 - handed to the child
    relay = subprocess.Popen(
        [PY, "-m", "relay", "run", "--config", str(demo.config)], stderr=log, env=demo.env
    )
    try:
        say(f"relay run (foreground) with data in {demo.data}")
        print(f"   stand-in Messages API {api_url}, stand-in ntfy {ntfy_url}")
        demo.wait_state("running")
        print("   topic:", demo.relay("topic").splitlines()[0].split()[-1])

        say("1. Two Claude Code sessions report in; chat-Claude answers each one")
        demo.chat_claude_will_say("Good. Next: add fuzz tests for the parser's error paths.")
        demo.session_sends("session-1", "Parser done, all unit tests green. What next?")
        demo.session_reads("session-1")
        demo.chat_claude_will_say("Thanks. Hold the release branch until session-1 is done.")
        demo.session_sends("session-2", "Release notes drafted in docs/RELEASE.md.")
        demo.session_reads("session-2")

        say("2. A question only the operator can answer: [NEEDS-JC] pauses dispatch")
        demo.chat_claude_will_say(
            "[NEEDS-JC] session-1 wants to drop Python 3.10 support "
            "to use match statements. Approve?\nOptions: approve | not yet"
        )
        demo.session_sends("session-1", "Can we drop Python 3.10? match statements would help.")
        status = demo.wait_state("needs_jc")
        print(
            f"   status: state={status['state']}, raised by {status['needs_jc_session']}, "
            f"question {status['needs_jc_question']}"
        )
        push = wait_push(ntfy_url, lambda m: m["priority"] >= 4)
        show(
            f"   ntfy push to the operator's phone (priority {push['priority']}):",
            f"{push['title']}: {push['message'].splitlines()[0]}",
        )
        buttons = ", ".join(f"[{a['label']}]" for a in push["actions"])
        print(f"   its buttons: {buttons}; tapping the push opens {push['click']}")

        say("3. While paused, new queue entries are accepted but held")
        demo.session_sends("session-2", "Ready to tag v2.0 when you are.")
        time.sleep(0.5)
        print(f"   status: state={demo.status()['state']}, inbox={demo.status()['inbox']} held")

        say("4. The operator talks to session-2 directly: no API call")
        calls = len(get_json(f"{api_url}/_requests"))
        demo.relay("reply", "@session-2: JC here, don't tag yet, wait for the 3.10 decision.")
        demo.session_reads("session-2")
        print(f"   API calls made for it: {len(get_json(f'{api_url}/_requests')) - calls}")

        say("5. The operator taps [approve] on the phone; the pause lifts, the answer flows back")
        demo.chat_claude_will_say("Approved by JC: drop 3.10, update pyproject and CI matrix.")
        demo.chat_claude_will_say("Hold the tag one more day; the 3.10 removal lands first.")
        tap(push["actions"][0])  # exactly the request the ntfy app sends for the button
        demo.session_reads("session-1")
        demo.session_reads("session-2")  # the held entry, answered after the pause
        ack = wait_push(ntfy_url, lambda m: m["priority"] == 2)
        show("   acknowledgement pushed back to the phone:", ack["message"])

        say("6. relay status, and relay costs: what each call cost, from the ledger")
        time.sleep(0.3)
        print(textwrap.indent(demo.relay("status"), "   "))
        print(textwrap.indent(demo.relay("costs", "--by", "session"), "   "))

        say("7. A real Claude Code, connected: relay cc worker runs it headless for session-1")
        claude_code_worker(demo, work)
        print(f"\n   files: {demo.data}   log: {work / 'relay.log'}")
        return 0
    finally:
        for proc in (relay, api, ntfy):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        log.close()
        if os.environ.get("RELAY_DEMO_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
