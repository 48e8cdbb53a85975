"""`relay cc install` / `uninstall`: wire Claude Code to relay, and unwire it exactly.

Three things can be installed, each recorded as a component in a manifest
(`$XDG_STATE_HOME/relay/cc-install.json`) together with what the files it touched looked
like before:

- the plugin (`claude plugin marketplace add` + `claude plugin install`, user or project
  scope) from relay's directory marketplace;
- or, with `--settings` (or a `claude` without plugin support), the same hooks merged into
  the scope's `settings.json`;
- a project binding, `<project>/.claude/relay.json`.

Installing what is already there writes nothing, so installing twice leaves the same bytes.
Uninstalling takes out what the install added (keys, hook entries, files and directories)
and nothing else; a file that then means what it meant before gets its old bytes back, so
Claude Code's reformatting and key reordering leave no trace either.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import relay
from relay import fsutil
from relay.cc import identity
from relay.errors import RelayError, UsageError

PLUGIN = "relay"
MARKETPLACE = "relay"
PLUGIN_ID = f"{PLUGIN}@{MARKETPLACE}"
HOOK_SCRIPT = "relay-hook"
PACKAGED_PLUGIN = Path("/usr/share/relay/claude-code")
CLAUDE_TIMEOUT_S = 60.0


# --- where things are --------------------------------------------------------------------


def marketplace_dir(environ: Mapping[str, str]) -> Path:
    """relay's directory marketplace: `$RELAY_CC_PLUGIN`, a development checkout's own
    `claude-code/`, or the package's. Claude Code runs plugin hooks from this very
    directory, so it must stay where it is."""
    override = environ.get("RELAY_CC_PLUGIN")
    checkout = Path(relay.__file__).resolve().parents[1] / "claude-code"
    for candidate in (Path(override) if override else None, checkout, PACKAGED_PLUGIN):
        if candidate is not None and (candidate / ".claude-plugin" / "marketplace.json").is_file():
            return candidate.resolve()
    raise RelayError(
        "cannot find relay's Claude Code plugin: looked in "
        f"{override + ', ' if override else ''}{checkout} and {PACKAGED_PLUGIN}"
    )


def plugin_dir(environ: Mapping[str, str]) -> Path:
    return marketplace_dir(environ) / PLUGIN


def claude_binary(environ: Mapping[str, str]) -> str | None:
    """`$RELAY_CLAUDE`, else `claude` on PATH."""
    chosen = environ.get("RELAY_CLAUDE")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    return shutil.which("claude", path=environ.get("PATH"))


def home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or os.path.expanduser("~"))


def manifest_path(environ: Mapping[str, str]) -> Path:
    state = environ.get("XDG_STATE_HOME") or str(home(environ) / ".local" / "state")
    return Path(state) / "relay" / "cc-install.json"


def settings_file(scope: str, environ: Mapping[str, str], project: Path | None) -> Path:
    if scope == "project":
        assert project is not None
        return project / ".claude" / "settings.json"
    return home(environ) / ".claude" / "settings.json"


@dataclass(frozen=True)
class Request:
    scope: str  # user | project
    project: Path | None
    session: str | None
    settings: bool
    config: Path | None


# --- JSON files, read and written the way Claude Code does ---------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RelayError(f"cannot read {path}: {exc}") from exc


def _parse(path: Path, text: str | None) -> Any:
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RelayError(
            f"{path} is not valid JSON ({exc}); fix it first, nothing was changed"
        ) from None


def _load_object(path: Path) -> dict[str, Any]:
    value = _parse(path, _read(path))
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RelayError(f"{path}: expected a JSON object")
    return value


def _dump(value: Any, like: str | None) -> str:
    """2-space JSON; a trailing newline if the file had one (new files get one)."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text + "\n" if like is None or like.endswith("\n") else text


def _write(path: Path, text: str, mode: int | None = None) -> None:
    # Through a symlink (a settings.json kept in a dotfiles repository, say): the link
    # stays a link, and its target gets the new bytes.
    path = Path(os.path.realpath(path))
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fsutil.makedirs(path.parent, 0o755)
    fsutil.atomic_write(path, text.encode("utf-8"), mode)


# --- snapshots: what the files looked like before -----------------------------------------


def _tracked_files(environ: Mapping[str, str], project: Path | None) -> list[Path]:
    h = home(environ)
    files = [
        h / ".claude" / "settings.json",
        h / ".claude.json",
        h / ".claude" / "plugins" / "known_marketplaces.json",
        h / ".claude" / "plugins" / "installed_plugins.json",
        h / ".config" / "git" / "ignore",
    ]
    if project is not None:
        files += [project / ".claude" / name for name in ("settings.json", "settings.local.json")]
    return files


def _tracked_trees(environ: Mapping[str, str], project: Path | None) -> list[Path]:
    """Where `claude plugin ...` creates files: its plugin registry and cache, the backups
    of ~/.claude.json it makes, and the directories above the files it writes. Nothing
    else, so that what other programs create meanwhile is never taken for ours."""
    h = home(environ)
    trees = [h / ".claude" / "plugins", h / ".claude" / "backups", h / ".config" / "git"]
    if project is not None:
        trees.append(project / ".claude")
    return trees


def _tracked_dirs(environ: Mapping[str, str]) -> list[Path]:
    h = home(environ)
    return [h / ".claude", h / ".config"]


def _listing(roots: list[Path], dirs: list[Path]) -> set[str]:
    found = {str(d) for d in dirs if d.is_dir()}
    for root in roots:
        if not root.exists():
            continue
        found.add(str(root))
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                found.add(os.path.join(dirpath, name))
    return found


def _missing_parents(path: Path) -> list[str]:
    made: list[str] = []
    for parent in path.parents:
        if parent.exists():
            break
        made.append(str(parent))
    return made


def _snapshot(files: list[Path]) -> dict[str, dict[str, Any]]:
    shot: dict[str, dict[str, Any]] = {}
    for path in files:
        text = _read(path)
        mode = os.stat(path).st_mode & 0o7777 if text is not None else None
        shot[str(path)] = {"text": text, "mode": mode}
    return shot


# --- pruning what an install added ---------------------------------------------------------


def _prune(current: Any, before: Any, after: Any) -> Any:
    """`current` without what the install added (in `after`, not in `before`).

    A value the install added and nobody changed since goes whole; one changed since loses
    only what the install put in, and goes too if nothing else is left in it.
    """
    if isinstance(current, dict) and isinstance(after, dict):
        old = before if isinstance(before, dict) else {}
        result: dict[str, Any] = {}
        for key, value in current.items():
            if key in after and key not in old:
                if value == after[key]:
                    continue
                value = _prune(value, None, after[key])
                if value in ({}, []):
                    continue
            elif key in after:
                value = _prune(value, old[key], after[key])
            result[key] = value
        return result
    if isinstance(current, list) and isinstance(after, list):
        old_items = before if isinstance(before, list) else []
        return [item for item in current if item in old_items or item not in after]
    return current


_OURS = {PLUGIN_ID, MARKETPLACE}


def _prune_named(value: Any) -> Any:
    """Only relay's own entries (`relay@relay`, marketplace `relay`), wherever they are."""
    if isinstance(value, dict):
        return {k: _prune_named(v) for k, v in value.items() if k not in _OURS}
    if isinstance(value, list):
        return [_prune_named(v) for v in value if not (isinstance(v, str) and v in _OURS)]
    return value


def _revert_file(path: Path, before: dict[str, Any], after_value: Any) -> None:
    current_text = _read(path)
    if current_text is None:
        return  # removed meanwhile: nothing of ours is left in it
    before_text = before.get("text")
    before_value = _parse(path, before_text)
    current = _parse(path, current_text)
    pruned = _prune(current, before_value, after_value)
    if before_text is None and pruned in ({}, [], None):
        path.unlink()  # ours alone, untouched since
        return
    if before_text is not None and pruned == before_value:
        if current_text != before_text:  # Claude Code reformats; give the old bytes back
            _write(path, before_text, before.get("mode"))
        return
    # Changed meanwhile. A settings file that existed loses exactly what the install put
    # in. A file the install created (Claude Code's plugin registries) and ~/.claude.json
    # (Claude Code's running state: the keys its first start added are its own now) lose
    # only what is plainly relay's, so they stay valid for Claude Code.
    if before_text is None or path.name == ".claude.json":
        pruned = _prune_named(current)
    if pruned != current:
        _write(path, _dump(pruned, current_text))


def _remove_created(paths: list[str]) -> None:
    """Remove files and directories the install created, deepest first; a directory only
    once it is empty (whatever was put there since stays)."""
    for name in sorted(paths, key=lambda p: p.count(os.sep), reverse=True):
        path = Path(name)
        with contextlib.suppress(FileNotFoundError, OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


# --- the manifest ---------------------------------------------------------------------------


class Manifest:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.path = manifest_path(environ)
        raw = _parse(self.path, _read(self.path)) or {}
        self.components: list[dict[str, Any]] = list(raw.get("components", []))
        self.made_dirs: list[str] = list(raw.get("made_dirs", []))

    def find(self, key: str) -> dict[str, Any] | None:
        return next((c for c in self.components if c.get("key") == key), None)

    def add(self, component: dict[str, Any]) -> None:
        if not self.path.exists() and not self.components:
            self.made_dirs = _missing_parents(self.path)
        self.components = [c for c in self.components if c.get("key") != component["key"]]
        self.components.append(component)
        self.save()

    def remove(self, key: str) -> None:
        self.components = [c for c in self.components if c.get("key") != key]
        self.save()

    def save(self) -> None:
        if self.components:
            data = {"components": self.components, "made_dirs": self.made_dirs}
            fsutil.makedirs(self.path.parent, 0o700)
            fsutil.atomic_write(self.path, _dump(data, None).encode(), 0o600)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            _remove_created(self.made_dirs)

    def bindings(self) -> list[dict[str, Any]]:
        return [c for c in self.components if c.get("kind") == "binding"]


# --- Claude Code's own plugin state ----------------------------------------------------------


def marketplace_known(environ: Mapping[str, str]) -> str | None:
    known = _load_object(home(environ) / ".claude" / "plugins" / "known_marketplaces.json")
    entry = known.get(MARKETPLACE)
    if isinstance(entry, dict):
        location = entry.get("installLocation") or entry.get("source", {}).get("path")
        return str(location) if location else ""
    return None


def plugin_installed(environ: Mapping[str, str], scope: str, project: Path | None) -> bool:
    installed = _load_object(home(environ) / ".claude" / "plugins" / "installed_plugins.json")
    entries = installed.get("plugins", {}).get(PLUGIN_ID, [])
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("scope") != scope:
            continue
        if scope == "user" or str(entry.get("projectPath")) == str(project):
            return True
    return False


def plugin_enabled(environ: Mapping[str, str], scope: str, project: Path | None) -> bool:
    settings = _load_object(settings_file(scope, environ, project))
    enabled = settings.get("enabledPlugins")
    return isinstance(enabled, dict) and enabled.get(PLUGIN_ID) is True


def _claude(claude: str, args: list[str], environ: Mapping[str, str], cwd: Path | None) -> str:
    env = {k: v for k, v in environ.items() if k not in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")}
    try:
        result = subprocess.run(
            [claude, *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLAUDE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RelayError(f"{claude} {' '.join(args)}: {exc}") from exc
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise RelayError(
            f"{claude} {' '.join(args)} failed (status {result.returncode}): "
            f"{said[-1] if said else 'no output'}"
        )
    return result.stdout


def supports_plugins(claude: str, environ: Mapping[str, str]) -> bool:
    try:
        _claude(claude, ["plugin", "--help"], environ, None)
    except RelayError:
        return False
    return True


# --- hooks in settings.json --------------------------------------------------------------


PLUGIN_SCRIPT = f'"${{CLAUDE_PLUGIN_ROOT}}/hooks/{HOOK_SCRIPT}"'


def plugin_hooks(environ: Mapping[str, str]) -> dict[str, Any]:
    """The plugin's hooks with `${CLAUDE_PLUGIN_ROOT}` spelled out, for a settings.json.

    The path goes into a shell command, so it is quoted for the shell (a checkout under a
    directory named `$(...)` must not run anything)."""
    root = plugin_dir(environ)
    hooks: dict[str, Any] = json.loads((root / "hooks" / "hooks.json").read_text())["hooks"]
    script = shlex.quote(str(root / "hooks" / HOOK_SCRIPT))
    for groups in hooks.values():
        for group in groups:
            for hook in group["hooks"]:
                hook["command"] = hook["command"].replace(PLUGIN_SCRIPT, script)
    return hooks


def _hooks_of(settings: dict[str, Any], path: Path) -> dict[str, Any]:
    """settings["hooks"], checked: relay will not guess around a shape it does not know."""
    hooks = settings.get("hooks", {})
    if not isinstance(hooks, dict) or not all(isinstance(g, list) for g in hooks.values()):
        raise RelayError(
            f'{path}: "hooks" must map each event to a list of hook groups; '
            "fix it first, nothing was changed"
        )
    return hooks


def is_ours(group: Any) -> bool:
    """A hook group of relay's: every command in it runs relay's hook script."""
    hooks = group.get("hooks") if isinstance(group, dict) else None
    return (
        isinstance(hooks, list)
        and bool(hooks)
        and all(
            isinstance(h, dict) and f"/hooks/{HOOK_SCRIPT}" in str(h.get("command", ""))
            for h in hooks
        )
    )


def merged_settings(settings: dict[str, Any], ours: dict[str, Any], path: Path) -> dict[str, Any]:
    """`settings` with relay's hook groups in place of any older ones of relay's."""
    result = copy.deepcopy(settings)
    hooks = copy.deepcopy(_hooks_of(settings, path))
    result["hooks"] = hooks
    for event, groups in ours.items():
        existing = [g for g in hooks.get(event, []) if not is_ours(g)]
        hooks[event] = existing + groups
    return result


def without_our_hooks(settings: dict[str, Any], before: Any = None) -> dict[str, Any]:
    """`settings` without relay's hook groups; lists and the `hooks` key that are empty
    then go too, unless they were there (empty) `before`."""
    result = copy.deepcopy(settings)
    old = before.get("hooks") if isinstance(before, dict) else None
    old = old if isinstance(old, dict) else None
    hooks = result.get("hooks")
    if isinstance(hooks, dict):
        for event in list(hooks):
            groups = hooks[event]
            if isinstance(groups, list):
                hooks[event] = [g for g in groups if not is_ours(g)]
                if not hooks[event] and (old is None or event not in old):
                    del hooks[event]
        if not hooks and old is None:
            del result["hooks"]
    return result


def settings_hooks_installed(path: Path) -> bool:
    hooks = _load_object(path).get("hooks")
    return isinstance(hooks, dict) and any(
        isinstance(groups, list) and any(is_ours(g) for g in groups) for groups in hooks.values()
    )


# --- install / uninstall ------------------------------------------------------------------


def _component_key(kind: str, scope: str, project: Path | None) -> str:
    return f"{kind}:{scope}:{project or ''}"


def _check_request(request: Request) -> None:
    if request.scope not in ("user", "project"):
        raise UsageError(f"--scope must be user or project, not {request.scope!r}")
    if request.scope == "project" and request.project is None:
        raise UsageError("--scope project needs --project DIR")
    if request.session is not None and request.project is None:
        raise UsageError("--session binds a project: give --project DIR too")
    if request.project is not None and not request.project.is_dir():
        raise UsageError(f"--project {request.project}: no such directory")


def install(request: Request, environ: Mapping[str, str]) -> list[str]:
    """Install what `request` asks for; return what was done, one line each."""
    _check_request(request)
    manifest = Manifest(environ)
    done: list[str] = []
    use_settings = request.settings
    claude = claude_binary(environ)
    if not use_settings and (claude is None or not supports_plugins(claude, environ)):
        why = "no claude on PATH" if claude is None else f"{claude} has no plugin support"
        done.append(f"{why}: merging the hooks into settings.json instead")
        use_settings = True
    hook_project = request.project if request.scope == "project" else None
    if use_settings:
        done.append(_install_settings(request, manifest, environ, hook_project))
    else:
        assert claude is not None
        done.append(_install_plugin(request, manifest, environ, claude, hook_project))
    if request.session is not None:
        assert request.project is not None
        done.append(_install_binding(request, manifest))
    return done


def _record(
    manifest: Manifest,
    key: str,
    kind: str,
    before: dict[str, dict[str, Any]],
    tree_before: set[str],
    environ: Mapping[str, str],
    project: Path | None,
    extra: dict[str, Any],
) -> None:
    after = {
        path: _parse(Path(path), _read(Path(path)))
        for path in before
        if _read(Path(path)) != before[path]["text"]
    }
    created = sorted(
        _listing(_tracked_trees(environ, project), _tracked_dirs(environ)) - tree_before
    )
    created = [p for p in created if p not in before]
    manifest.add(
        {
            "key": key,
            "kind": kind,
            "files": {p: {**before[p], "after": after[p]} for p in after},
            "created": created,
            **extra,
        }
    )


def _install_plugin(
    request: Request,
    manifest: Manifest,
    environ: Mapping[str, str],
    claude: str,
    project: Path | None,
) -> str:
    scope = request.scope
    source = marketplace_dir(environ)
    known = marketplace_known(environ)
    if (
        known is not None
        and Path(known) == source
        and plugin_installed(environ, scope, project)
        and plugin_enabled(environ, scope, project)
    ):
        return f"plugin {PLUGIN_ID} already installed ({scope} scope, from {source})"
    key = _component_key("plugin", scope, project)
    files = _tracked_files(environ, project)
    trees = _tracked_trees(environ, project)
    before = _snapshot(files)
    tree_before = _listing(trees, _tracked_dirs(environ))
    prior = manifest.find(key)
    try:
        if known is not None and Path(known) != source:
            raise RelayError(
                f"Claude Code already knows a marketplace named {MARKETPLACE!r} at {known}; "
                f"remove it first (claude plugin marketplace remove {MARKETPLACE})"
            )
        if known is None:
            _claude(claude, ["plugin", "marketplace", "add", str(source)], environ, None)
        _claude(claude, ["plugin", "install", PLUGIN_ID, "--scope", scope], environ, project)
    finally:
        if prior is None:
            _record(manifest, key, "plugin", before, tree_before, environ, project, {})
    return f"installed plugin {PLUGIN_ID} ({scope} scope) from {source}"


def _install_settings(
    request: Request, manifest: Manifest, environ: Mapping[str, str], project: Path | None
) -> str:
    path = settings_file(request.scope, environ, project)
    text = _read(path)
    current = _load_object(path)
    wanted = merged_settings(current, plugin_hooks(environ), path)
    if wanted == current:
        return f"hooks already in {path}"
    key = _component_key("settings", request.scope, project)
    if manifest.find(key) is None:
        manifest.add(
            {
                "key": key,
                "kind": "settings",
                "path": str(path),
                "files": {},
                "before": {"text": text, "mode": None},
                "created": _missing_parents(path),
            }
        )
    _write(path, _dump(wanted, text))
    return f"merged relay's hooks into {path}"


def _install_binding(request: Request, manifest: Manifest) -> str:
    assert request.project is not None and request.session is not None
    path = identity.binding_file(request.project)
    value: dict[str, str] = {"session": request.session}
    if request.config is not None:
        value["config"] = str(request.config.resolve())
    text = _read(path)
    if text is not None and _parse(path, text) == value:
        return f"{request.project} already bound to {request.session}"
    key = _component_key("binding", "project", request.project)
    if manifest.find(key) is None:
        manifest.add(
            {
                "key": key,
                "kind": "binding",
                "path": str(path),
                "project": str(request.project),
                "session": request.session,
                "before": {"text": text},
                "created": _missing_parents(path),
            }
        )
    else:
        component = manifest.find(key)
        assert component is not None
        component["session"] = request.session
        manifest.save()
    _write(path, _dump(value, None), 0o644)
    return f"bound {request.project} to relay session {request.session} ({path})"


def uninstall(request: Request, environ: Mapping[str, str]) -> list[str]:
    _check_request(request)
    manifest = Manifest(environ)
    hook_project = request.project if request.scope == "project" else None
    done: list[str] = []
    if request.project is not None and (request.session is not None or request.scope == "user"):
        done += _uninstall_binding(manifest, request.project)
    kinds = ("settings",) if request.settings else ("plugin", "settings")
    for kind in kinds:
        component = manifest.find(_component_key(kind, request.scope, hook_project))
        if component is None:
            continue
        if kind == "plugin":
            for name, before in component["files"].items():
                _revert_file(Path(name), before, before.get("after"))
            _remove_created(component["created"])
            done.append(f"removed plugin {PLUGIN_ID} ({request.scope} scope)")
        else:
            path = Path(component["path"])
            _revert_settings(path, component["before"])
            _remove_created(component["created"])
            done.append(f"removed relay's hooks from {path}")
        manifest.remove(component["key"])
    if not done:
        done.append("nothing of relay's is installed there")
    return done


def _revert_settings(path: Path, before: dict[str, Any]) -> None:
    text = _read(path)
    if text is None:
        return
    current = _load_object(path)
    before_text = before.get("text")
    before_value = _parse(path, before_text) if before_text is not None else None
    pruned = without_our_hooks(current, before_value)
    if before_text is None and not pruned:
        path.unlink()
    elif before_text is not None and pruned == before_value:
        if text != before_text:
            _write(path, before_text)
    elif pruned != current:
        _write(path, _dump(pruned, text))


def _uninstall_binding(manifest: Manifest, project: Path) -> list[str]:
    component = manifest.find(_component_key("binding", "project", project))
    path = identity.binding_file(project)
    if component is None:
        return []
    before = component["before"].get("text")
    if before is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        _write(path, before, 0o644)
    _remove_created(component["created"])
    manifest.remove(component["key"])
    return [f"unbound {project}"]
