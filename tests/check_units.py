#!/usr/bin/python3
"""Static checks for relay's systemd units; no running systemd needed (docs/systemd.md §6.1).

    python3 tests/check_units.py [UNITS_DIR]     # prints every problem, exit 1 if any

- ``systemd-analyze verify --man=no`` on the unit files as they are. It exits 0 on unknown keys
  (e.g. StartLimitIntervalSec= under [Service]) and only warns, so *any* output is a problem,
  with one justified exception: "Command /usr/bin/relay is not executable" while relay is not
  installed on the checking machine (the package provides it).
- The same verify inside a staged root (the host's standard units, our units in
  /etc/systemd/system, a placeholder /usr/bin/relay), where no exception is needed at all.
- ``systemd-analyze security --offline=yes``: exposure limits per service.
- Things verify does not check: every .path has its service, the relay.target wiring (model A,
  §5.2), start limits in [Unit], handler timeouts and no network, the long-running services'
  notify/restart policy and restart pacing that cannot burn the start limit, the
  conversation's ExecReload= (relay reload, which waits for the outcome), credential
  sources being bare credstore names, and which units load which credential.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

UNITS_DIR = Path(__file__).resolve().parents[1] / "units"
RELAY_BIN = "/usr/bin/relay"
# `systemctl reload` must wait for relay's answer, so a refused config fails the reload.
RELOAD_COMMAND = f"{RELAY_BIN} reload --pid $MAINPID"
TARGET = "relay.target"
CONVERSATION = "relay-conversation.service"
ANSWERS = "relay-answers.service"
# The long-running members of relay.target (Type=notify, restarted on failure).
DAEMONS = (CONVERSATION, ANSWERS)
ALERT_TEMPLATE = "relay-alert@.service"
ALERT_ON_FAILURE = "relay-alert@%n.service"
# Credentials: (id, bare credstore name) and the units that must load each (docs/systemd.md §4.2).
API_KEY_CREDENTIAL = "anthropic-api-key:relay.anthropic-api-key"
NTFY_CREDENTIAL = "ntfy-token:relay.ntfy-token"
CREDENTIALS: dict[str, tuple[str, ...]] = {
    API_KEY_CREDENTIAL: (CONVERSATION,),
    NTFY_CREDENTIAL: (CONVERSATION, ANSWERS, ALERT_TEMPLATE),
}
# Environment= names that would put a secret in the environment.
SECRET_ENV = re.compile(r"API_KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
# Exposure (0-10, lower is better) allowed per service by `systemd-analyze security`.
EXPOSURE_LIMITS: dict[str, float] = {
    CONVERSATION: 1.5,
    ANSWERS: 1.1,
    "relay-queue.service": 1.0,
    "relay-jc.service": 1.0,
    ALERT_TEMPLATE: 1.5,
}
UNIT_SUFFIXES = (".service", ".path", ".target", ".socket", ".timer")
MISSING_BIN = re.compile(
    r"^(?P<unit>\S+): Command " + re.escape(RELAY_BIN) + r" is not executable: "
    r"No such file or directory$"
)
EXPOSURE_LINE = re.compile(r"Overall exposure level for \S+: (?P<score>\d+(?:\.\d+)?)")
TIME_UNITS: dict[str, float] = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
    "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip

Unit = dict[str, list[tuple[str, str]]]


# ----- parsing ------------------------------------------------------------------------------


def unit_files(units_dir: Path = UNITS_DIR) -> list[Path]:
    return sorted(p for p in units_dir.iterdir() if p.name.endswith(UNIT_SUFFIXES))


def parse_unit(path: Path) -> Unit:
    """Sections -> ordered (key, value) pairs; keys may repeat, as systemd allows."""
    unit: Unit = {}
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        unit.setdefault(section, []).append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str | None:
    found = values(unit, section, key)
    return found[-1] if found else None


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for v in values(unit, section, key) for w in v.split()]


def seconds(span: str) -> float:
    """A systemd time span ("5s", "1min 30s", "500ms", "90") in seconds."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip())
    if not parts:
        raise ValueError(f"not a time span: {span!r}")
    for number, suffix in parts:
        if suffix not in TIME_UNITS:
            raise ValueError(f"unknown time unit {suffix!r} in {span!r}")
        total += float(number) * TIME_UNITS[suffix]
    return total


def load(units_dir: Path) -> dict[str, Unit]:
    return {p.name: parse_unit(p) for p in unit_files(units_dir)}


def triggered_service(name: str, unit: Unit) -> str:
    return value(unit, "Path", "Unit") or name.removesuffix(".path") + ".service"


# ----- systemd-analyze ----------------------------------------------------------------------


def _analyze(args: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        raise RuntimeError("systemd-analyze not found (apt-get install systemd)")
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def check_verify(units_dir: Path = UNITS_DIR) -> list[str]:
    """verify the files in place; only the justified missing-binary line is tolerated."""
    files = [str(p) for p in unit_files(units_dir)]
    res = _analyze(["verify", "--man=no", *files])
    relay_installed = os.access(RELAY_BIN, os.X_OK)
    problems = []
    for line in (res.stdout + res.stderr).splitlines():
        if not line.strip():
            continue
        if not relay_installed and MISSING_BIN.match(line):
            continue  # the package installs /usr/bin/relay; this host need not have it
        problems.append(f"verify: {line}")
    if res.returncode != 0 and not problems and relay_installed:
        problems.append(f"verify: exit {res.returncode} without output")
    return problems


def _stage_root(root: Path, units_dir: Path) -> list[str]:
    """A minimal root for `verify --root`: standard units, ours, a placeholder relay."""
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    names = []
    for unit in unit_files(units_dir):
        shutil.copy2(unit, etc / unit.name)
        names.append(unit.name)
    relay = root / RELAY_BIN.lstrip("/")
    relay.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/true", relay)
    # Other commands (e.g. /usr/bin/sleep) come from the host; a typo stays missing.
    for command in exec_commands(units_dir) - {RELAY_BIN}:
        if Path(command).is_file():
            staged = root / command.lstrip("/")
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(command, staged)
    return names


def exec_commands(units_dir: Path) -> set[str]:
    """Absolute executables of every Exec*= line (prefixes such as "-" or "!" stripped)."""
    commands = set()
    for unit in load(units_dir).values():
        for key, val in unit.get("Service", []):
            if key.startswith("Exec") and val:
                commands.add(val.split()[0].lstrip("-@:+!"))
    return commands


def check_verify_staged(units_dir: Path = UNITS_DIR) -> list[str]:
    """verify --root with relay present: nothing at all may be printed."""
    with tempfile.TemporaryDirectory(prefix="relay-units-") as tmp:
        names = _stage_root(Path(tmp), units_dir)
        res = _analyze(["verify", "--man=no", f"--root={tmp}", *names])
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    problems = [f"verify --root: {line.replace(tmp, '<root>')}" for line in lines]
    if res.returncode != 0 and not problems:
        problems.append(f"verify --root: exit {res.returncode} without output")
    return problems


def exposure(unit_file: Path) -> float:
    """Overall exposure from `systemd-analyze security --offline=yes` (0.0 best, 10.0 worst)."""
    args = ["security", "--offline=yes", "--no-pager", f"./{unit_file.name}"]
    res = _analyze(args, cwd=unit_file.parent)
    match = EXPOSURE_LINE.search(res.stdout)
    if match is None:
        raise RuntimeError(f"no exposure for {unit_file.name}: {res.stdout}{res.stderr}")
    return float(match["score"])


def check_exposure(units_dir: Path = UNITS_DIR) -> list[str]:
    problems = []
    services = [p for p in unit_files(units_dir) if p.name.endswith(".service")]
    for path in services:
        limit = EXPOSURE_LIMITS.get(path.name)
        if limit is None:
            problems.append(f"{path.name}: no exposure limit declared in check_units.py")
            continue
        score = exposure(path)
        if score > limit:
            problems.append(f"{path.name}: exposure {score} > {limit}")
    return problems


# ----- what verify does not check -------------------------------------------------------------


def check_pairing(units: dict[str, Unit]) -> list[str]:
    """Every .path triggers an existing service; OnFailure templates exist."""
    problems = []
    for name, unit in units.items():
        if name.endswith(".path") and triggered_service(name, unit) not in units:
            problems.append(f"{name}: triggers {triggered_service(name, unit)}, not in units/")
        for dep in words(unit, "Unit", "OnFailure"):
            template = re.sub(r"@.*\.service$", "@.service", dep)
            if dep not in units and template not in units:
                problems.append(f"{name}: OnFailure={dep} does not exist")
    return problems


def check_target(units: dict[str, Unit]) -> list[str]:
    """Model A: the target Wants= every member and is the only unit with [Install]."""
    target = units.get(TARGET)
    if target is None:
        return [f"{TARGET} missing"]
    problems = []
    if "multi-user.target" not in words(target, "Install", "WantedBy"):
        problems.append(f"{TARGET}: [Install] WantedBy=multi-user.target missing")
    members = set(DAEMONS) | {n for n in units if n.endswith(".path")}
    if set(words(target, "Unit", "Wants")) != members:
        problems.append(f"{TARGET}: Wants= should be exactly {sorted(members)}")
    handlers = {triggered_service(n, units[n]) for n in units if n.endswith(".path")}
    for name in sorted(members | handlers):
        unit = units.get(name, {})
        if "relay.target" not in words(unit, "Unit", "PartOf"):
            problems.append(f"{name}: PartOf=relay.target missing")
        if "Install" in unit:
            problems.append(f"{name}: members are static, no [Install] (relay.target enables)")
    return problems


def check_common(units: dict[str, Unit]) -> list[str]:
    problems = []
    for name, unit in units.items():
        if "man:relay(1)" not in words(unit, "Unit", "Documentation"):
            problems.append(f"{name}: Documentation=man:relay(1) missing")
        for key in ("StartLimitIntervalSec", "StartLimitBurst"):
            if values(unit, "Service", key):
                problems.append(f"{name}: {key}= belongs in [Unit]")
        if not name.endswith(".service"):
            continue
        if value(unit, "Service", "User") != "relay" or value(unit, "Service", "Group") != "relay":
            problems.append(f"{name}: must run as User=relay Group=relay")
        if value(unit, "Service", "UMask") != "0077":
            problems.append(f"{name}: UMask=0077 missing")
        for env in words(unit, "Service", "Environment"):
            if SECRET_ENV.search(env.partition("=")[0]):
                problems.append(
                    f"{name}: Environment={env}: secrets must not be in the environment "
                    "(use LoadCredential=)"
                )
        if not (value(unit, "Service", "SyslogIdentifier") or "").startswith("relay-"):
            problems.append(f"{name}: SyslogIdentifier=relay-... missing (journal contract)")
    return problems


def check_handlers(units: dict[str, Unit]) -> list[str]:
    """Path-triggered handlers: oneshot, bounded, offline, start limits that bursts never hit."""
    problems = []
    for path_name, path_unit in units.items():
        if not path_name.endswith(".path"):
            continue
        if ALERT_ON_FAILURE not in words(path_unit, "Unit", "OnFailure"):
            problems.append(f"{path_name}: OnFailure={ALERT_ON_FAILURE} missing")
        name = triggered_service(path_name, path_unit)
        unit = units.get(name)
        if unit is None:
            continue  # reported by check_pairing
        problems += _check_handler(name, unit)
    return problems


def _check_handler(name: str, unit: Unit) -> list[str]:
    problems = []
    if value(unit, "Service", "Type") != "oneshot":
        problems.append(f"{name}: Type=oneshot expected")
    timeout = value(unit, "Service", "TimeoutStartSec")
    if timeout in (None, "0", "infinity"):
        problems.append(f"{name}: TimeoutStartSec= must bound a oneshot (none by default)")
    if value(unit, "Service", "PrivateNetwork") != "yes":
        problems.append(f"{name}: handlers need no network: PrivateNetwork=yes")
    problems += _check_handler_pacing(name, unit)
    return problems


def _check_handler_pacing(name: str, unit: Unit) -> list[str]:
    """Each path-triggered file can cost one run, so every successful run must last at least
    some `pace` (an ExecStartPost= sleep, or `relay intake ... --linger N`, which keeps a run
    busy until the queue has been quiet N s) such that legitimate runs can never reach the
    start limit: at most interval/pace + 1 starts per interval, below the burst."""
    pace = handler_pace(unit)
    if pace <= 0:
        return [
            f"{name}: no pacing (ExecStartPost=/usr/bin/sleep N or --linger N): a trickle of "
            "files otherwise costs one start each and hits the start limit"
        ]
    interval = seconds(value(unit, "Unit", "StartLimitIntervalSec") or "10s")
    burst = int(value(unit, "Unit", "StartLimitBurst") or "5")
    most = int(interval // pace) + 1
    if most >= burst:
        return [f"{name}: {most} paced starts fit in {interval:g}s, StartLimitBurst={burst}"]
    return []


def handler_pace(unit: Unit) -> float:
    """Minimum duration of a successful handler run implied by the unit, in seconds."""
    pace = 0.0
    for line in values(unit, "Service", "ExecStartPost"):
        argv = line.split()
        if argv[0].endswith("/sleep") and len(argv) == 2:
            pace += seconds(argv[1])
    for line in values(unit, "Service", "ExecStart"):
        match = re.search(r"--linger[= ](\d+(?:\.\d+)?)", line)
        if match:
            pace += float(match[1])
    return pace


def check_daemons(units: dict[str, Unit]) -> list[str]:
    """The long-running services: notify, restarted on failure at a pace that can never hit
    the start limit, not restarted on a configuration error, alerting when they give up."""
    problems = []
    for name in DAEMONS:
        unit = units.get(name)
        if unit is None:
            problems.append(f"{name} missing")
            continue
        expect = {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure"}
        for key, want in expect.items():
            if value(unit, "Service", key) != want:
                problems.append(f"{name}: {key}={want} expected")
        if "2" not in words(unit, "Service", "RestartPreventExitStatus"):
            problems.append(f"{name}: RestartPreventExitStatus=2 missing (configuration error)")
        if ALERT_ON_FAILURE not in words(unit, "Unit", "OnFailure"):
            problems.append(f"{name}: OnFailure={ALERT_ON_FAILURE} missing")
        if value(unit, "Service", "TimeoutStopSec") in (None, "0", "infinity"):
            problems.append(f"{name}: TimeoutStopSec= missing")
        for key in ("Wants", "After"):
            if "network-online.target" not in words(unit, "Unit", key):
                problems.append(f"{name}: {key}=network-online.target missing")
        if "PYTHONFAULTHANDLER=1" not in words(unit, "Service", "Environment"):
            problems.append(f"{name}: Environment=PYTHONFAULTHANDLER=1 missing")
        problems += _check_restart_pacing(name, unit)
    return problems


def check_conversation(units: dict[str, Unit]) -> list[str]:
    unit = units.get(CONVERSATION)
    if unit is None:
        return [f"{CONVERSATION} missing"]
    problems = []
    if value(unit, "Service", "WatchdogSec") in (None, "0"):
        problems.append(f"{CONVERSATION}: WatchdogSec= missing")
    if "relay-clients" not in words(unit, "Service", "SupplementaryGroups"):
        problems.append(f"{CONVERSATION}: SupplementaryGroups=relay-clients missing (dispatch/)")
    if value(unit, "Service", "ExecReload") != RELOAD_COMMAND:
        problems.append(f"{CONVERSATION}: ExecReload={RELOAD_COMMAND} expected (relay reload)")
    return problems


def check_answers(units: dict[str, Unit]) -> list[str]:
    """The answer subscriber writes only state/ and calls no API: no more than that."""
    unit = units.get(ANSWERS)
    if unit is None:
        return [f"{ANSWERS} missing"]
    problems = []
    if value(unit, "Service", "ExecStart") != f"{RELAY_BIN} subscribe":
        problems.append(f"{ANSWERS}: ExecStart={RELAY_BIN} subscribe expected")
    if words(unit, "Service", "SupplementaryGroups"):
        problems.append(f"{ANSWERS}: no SupplementaryGroups= (it writes only state/)")
    return problems


def check_credentials(units: dict[str, Unit]) -> list[str]:
    """Bare credstore names only (a missing file must not fail the unit), each credential in
    the units that need it and in no other."""
    problems = []
    for name, unit in units.items():
        loaded = words(unit, "Service", "LoadCredential")
        for cred in loaded:
            _, _, source = cred.partition(":")
            if "/" in source:
                problems.append(
                    f"{name}: LoadCredential={cred}: a missing absolute path fails the "
                    "unit (243/CREDENTIALS); use a bare credstore name"
                )
        for cred, needed_by in CREDENTIALS.items():
            if name in needed_by and cred not in loaded:
                problems.append(f"{name}: LoadCredential={cred} missing")
            if name not in needed_by and cred in loaded:
                problems.append(f"{name}: LoadCredential={cred}: it does not need it")
    return problems


def _check_restart_pacing(name: str, unit: Unit) -> list[str]:
    """Restarts every RestartSec must fit the start limit, or a crash loop ends in
    start-limit-hit and stays dead (docs/systemd.md §2.3). Defaults: 100ms, 10s, 5."""
    restart = seconds(value(unit, "Service", "RestartSec") or "100ms")
    interval = seconds(value(unit, "Unit", "StartLimitIntervalSec") or "10s")
    burst = int(value(unit, "Unit", "StartLimitBurst") or "5")
    starts = int(interval // restart) + 1 if restart > 0 else sys.maxsize
    if starts > burst:
        return [
            f"{name}: RestartSec={restart:g}s allows {starts} starts per "
            f"{interval:g}s, above StartLimitBurst={burst}"
        ]
    return []


STATIC_CHECKS: tuple[Callable[[dict[str, Unit]], list[str]], ...] = (
    check_pairing,
    check_target,
    check_common,
    check_handlers,
    check_daemons,
    check_conversation,
    check_answers,
    check_credentials,
)


def run_all(units_dir: Path = UNITS_DIR) -> list[str]:
    units = load(units_dir)
    problems = [p for check in STATIC_CHECKS for p in check(units)]
    problems += check_verify(units_dir)
    problems += check_verify_staged(units_dir)
    problems += check_exposure(units_dir)
    return problems


def main(argv: Sequence[str]) -> int:
    units_dir = Path(argv[1]) if len(argv) > 1 else UNITS_DIR
    problems = run_all(units_dir)
    for problem in problems:
        print(problem)
    print(f"{len(unit_files(units_dir))} units checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
