"""Build relay's Debian package for the system tests, and install it in a booted container.

The package is built the Debian way (`dpkg-buildpackage -us -uc -b`) from a copy of the work
tree, once per content: the result is cached under dist/system-tests/<hash>/, keyed by every
file that goes into the build, so re-running the tests after a test-only change is quick.
`build_deb(revision="2")` builds the same tree as a higher Debian revision, for upgrades.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .nspawn import Container

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "dist" / "system-tests"
# Only what the package is built from; tests and benchmarks do not change it.
BUILD_INPUTS = (
    "relay",
    "claude-code",
    "units",
    "packaging",
    "debian",
    "pyproject.toml",
    "README.md",
)

CONFIG_PATH = "/etc/relay/config.yaml"
KEY_PATH = "/etc/credstore/relay.anthropic-api-key"
DATA = "/var/lib/relay"


def _inputs() -> list[Path]:
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", *BUILD_INPUTS],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return sorted(ROOT / name for name in listed if name and (ROOT / name).is_file())


def _key(files: list[Path], revision: str | None) -> str:
    digest = hashlib.sha256(f"revision={revision}\n".encode())
    for path in files:
        digest.update(f"{path.relative_to(ROOT)}\0{path.stat().st_mode & 0o111}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _bump_changelog(changelog: Path, revision: str) -> None:
    text = changelog.read_text()
    first = text.splitlines()[0]  # "relay (0.1.0-1) bookworm; urgency=medium"
    upstream = first.split("(", 1)[1].split(")", 1)[0].rsplit("-", 1)[0]
    rest = first.split(")", 1)[1]
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    maintainer = next(line for line in text.splitlines() if line.startswith(" -- "))
    maintainer = maintainer.split("  ")[0].removeprefix(" -- ")
    entry = (
        f"relay ({upstream}-{revision}){rest}\n\n  * Rebuild for the upgrade test.\n\n"
        f" -- {maintainer}  {stamp}\n\n"
    )
    changelog.write_text(entry + text)


def build_deb(revision: str | None = None) -> Path:
    """The .deb built from the current tree (and revision), building it if not cached.
    Its .changes and .buildinfo lie beside it (for lintian)."""
    files = _inputs()
    out = CACHE / _key(files, revision)
    built = sorted(out.glob("relay_*.deb")) if out.is_dir() else []
    if built:
        return built[0]
    work = CACHE / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    source = work / "relay"
    for path in files:
        target = source / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if revision is not None:
        _bump_changelog(source / "debian" / "changelog", revision)
    started = time.monotonic()
    done = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"dpkg-buildpackage failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    print(f"built relay package in {time.monotonic() - started:.0f}s")
    out.mkdir(parents=True, exist_ok=True)
    for artefact in [
        *work.glob("relay_*.deb"),
        *work.glob("relay_*.changes"),
        *work.glob("relay_*.buildinfo"),
    ]:
        shutil.move(artefact, out / artefact.name)  # .changes names its files: keep them together
    shutil.rmtree(work, ignore_errors=True)
    return sorted(out.glob("relay_*.deb"))[0]


def config_yaml(api_url: str, ntfy_url: str | None, **extra: str) -> str:
    lines = [
        "sessions: [session-1, session-2]",
        f'anthropic: {{base_url: "{api_url}", timeout_s: 60}}',
        f'ntfy: {{server: "{ntfy_url}", topic: relay-system-test}}'
        if ntfy_url
        else "ntfy: {server: null}",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def copy_deb(container: Container, deb: Path) -> str:
    """Put the package inside the container. Host paths are not all visible there (nspawn
    mounts its own /tmp, and a CI checkout may live under /tmp), so it is copied in."""
    inside = f"/var/cache/relay-test/{deb.name}"
    container.run(["mkdir", "-p", "/var/cache/relay-test"])
    container.copy_in(deb, inside, mode=0o644)
    return inside


def install(container: Container, deb: Path) -> None:
    """`apt install ./relay_….deb` inside the booted container, as a user would.

    The host image ships /usr/sbin/policy-rc.d answering 101 ("never start services"), which
    the container inherits and deb-systemd-invoke obeys; a real Debian machine has none, so
    it goes first, and the package's own start-on-install is what gets tested."""
    container.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
    container.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", copy_deb(container, deb)],
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def place_config(container: Container, config: str, key: str | None) -> None:
    """The config and the API key where an administrator puts them (no key: none there)."""
    container.write_file(CONFIG_PATH, config, mode=0o644, owner="root:root")
    if key is None:
        container.run(["rm", "-f", KEY_PATH])
    else:
        container.write_file(KEY_PATH, key + "\n", mode=0o600, owner="root:root")


def configure(container: Container, config: str, key: str | None = "sk-system-test") -> None:
    """Write the config and the API key the documented way, then restart relay."""
    place_config(container, config, key)
    container.systemctl("restart", "relay.target")
    wait_ready(container)


def wait_ready(container: Container, timeout: float = 30) -> None:
    container.wait_for(
        lambda: (
            container.show("relay-conversation.service", "ActiveState") == "active"
            and container.exists(f"{DATA}/state/status.json")
        ),
        timeout=timeout,
        what="relay-conversation.service active",
    )


@contextmanager
def relay_container(
    deb: Path, config: str, key: str | None = "sk-system-test"
) -> Iterator[Container]:
    """A booted container with the package installed, configured and running."""
    with Container() as container:
        container.boot()
        install(container, deb)
        configure(container, config, key)
        yield container


def wait_input(container: Container, session: str, timeout: float = 30) -> str:
    path = f"{DATA}/dispatch/{session}/input.txt"
    container.wait_for(lambda: container.exists(path), timeout=timeout, what=path)
    return container.read_file(path)
