"""operator/: replies left by members of relay-operators, moved one at a time to jc_input.txt.

Real directories, the real intake where it takes the file in. The tests run as one user, so
"relay" is whoever owns operator/ here; `relay_uid=` stands for relay where a test needs the
writer to be someone else. Root ignores file modes, so refusals that depend on them are
tested through `refusal()`, the pure rule.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import pytest

from relay import cli, fsutil, intake, operator_drop
from relay.intake import IntakeResult
from relay.layout import Layout

OTHER = -1  # "relay" for a test whose files must count as someone else's


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "data")
    layout.ensure_intake()
    layout.operator_drop.mkdir(mode=0o770)
    return layout


def lstat_of(path: Path) -> os.stat_result:
    return os.lstat(path)


def drop_names(layout: Layout) -> list[str]:
    return sorted(os.listdir(layout.operator_drop))


# ----- the rule ---------------------------------------------------------------------------


def test_a_regular_file_of_someone_else_with_one_link_that_relay_reads_is_taken(
    tmp_path: Path,
) -> None:
    reply = tmp_path / "r.txt"
    reply.write_text("yes")
    assert operator_drop.refusal(lstat_of(reply), OTHER, readable=True) is None


def test_what_is_refused_and_why(tmp_path: Path) -> None:
    regular = tmp_path / "r.txt"
    regular.write_text("yes")
    link = tmp_path / "link"
    link.symlink_to(regular)
    directory = tmp_path / "dir"
    directory.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    hard = tmp_path / "hard"
    os.link(regular, hard)

    def why(path: Path, uid: int = OTHER, readable: bool = True) -> str | None:
        return operator_drop.refusal(lstat_of(path), uid, readable)

    assert why(link) == "not a regular file (a symlink)"
    assert why(directory) == "not a regular file (a directory)"
    assert why(fifo) == "not a regular file (a FIFO)"
    assert why(hard) == "has 2 hard links; a reply must have one"
    os.unlink(hard)
    # relay's own file in operator/ can only be a link to one of its files: the history, say.
    assert why(regular, uid=os.geteuid()) == "owned by relay, so not an operator's reply"
    regular.chmod(0o600)
    reason = why(regular, readable=False)
    assert reason is not None and "relay may not read it (mode 0600)" in reason


def test_reply_names_sort_by_time_and_never_collide() -> None:
    names = [operator_drop.reply_name(t, 42, n) for t, n in ((2, "aa"), (10, "bb"), (10, "cc"))]
    assert names == sorted(names) and len(set(names)) == 3
    assert operator_drop.reply_name(10, 42, "bb").endswith(".txt")


def test_a_refused_name_is_a_dot_name_that_fits() -> None:
    long = "é" * 127  # 254 bytes
    name = operator_drop.refused_name(long, "0123abcd")
    assert name.startswith(b".refused-0123abcd-") and len(name) <= 255


# ----- moving replies ---------------------------------------------------------------------


def test_a_reply_moves_to_jc_input_and_leaves_operator_empty(layout: Layout) -> None:
    written = operator_drop.write_reply(layout, b"go ahead")
    assert stat.S_IMODE(written.stat().st_mode) == 0o640  # its writer and relay read it
    result = IntakeResult()
    assert operator_drop.forward_one(layout, result, relay_uid=OTHER)
    assert layout.jc_input.read_text() == "go ahead"
    assert drop_names(layout) == [] and result.rejected == []


def test_an_unconsumed_jc_input_is_never_replaced(layout: Layout) -> None:
    layout.jc_input.write_text("root's answer")
    operator_drop.write_reply(layout, b"an operator's answer")
    assert not operator_drop.forward_one(layout, IntakeResult(), relay_uid=OTHER)
    assert layout.jc_input.read_text() == "root's answer"
    assert len(drop_names(layout)) == 1  # it waits its turn


def test_what_may_not_be_forwarded_is_set_aside_and_the_rest_goes_on(layout: Layout) -> None:
    drop = layout.operator_drop
    (drop / "a-link").symlink_to(layout.history)
    (drop / "b-dir").mkdir()
    (drop / "b-dir" / "inside").write_text("a directory with something in it")
    os.mkfifo(drop / "c-fifo")
    for name in ("a-link", "b-dir", "c-fifo"):
        os.utime(drop / name, (1, 1), follow_symlinks=False)  # older than the reply
    operator_drop.write_reply(layout, b"the real answer")
    result = IntakeResult()
    assert operator_drop.forward_one(layout, result, relay_uid=OTHER)
    assert layout.jc_input.read_text() == "the real answer"
    assert sorted(result.rejected) == ["operator/a-link", "operator/b-dir", "operator/c-fifo"]
    left = drop_names(layout)
    assert len(left) == 3 and all(n.startswith(".refused-") for n in left)
    assert {n.split("-", 2)[2] for n in left} == {"a-link", "b-dir", "c-fifo"}
    # Nothing was destroyed or followed: the link still points where it did.
    (link,) = (drop / n for n in left if n.endswith("a-link"))
    assert os.readlink(link) == str(layout.history)


def test_relays_own_file_is_not_forwarded(layout: Layout) -> None:
    layout.history.write_text('{"kind": "turn"}\n')
    os.link(layout.history, layout.operator_drop / "history")
    layout.history.unlink()  # one link left: only the owner gives it away
    result = IntakeResult()
    assert not operator_drop.forward_one(layout, result)  # relay: operator/'s owner, us
    assert result.rejected == ["operator/history"]
    assert not layout.jc_input.exists()


def test_drain_takes_replies_in_order_each_through_the_real_intake(layout: Layout) -> None:
    for n, text in enumerate(("first", "second", "third")):
        path = operator_drop.write_reply(layout, text.encode())
        os.utime(path, ns=(n * 10**9, (3 - n) * 10**9))  # mtime decides, not the name
    taken: list[str] = []

    def drain_operator(layout: Layout) -> IntakeResult:
        if layout.jc_input.exists():
            taken.append(layout.jc_input.read_text())
        return intake.drain_operator(layout)

    result = operator_drop.drain(layout, drain_operator, relay_uid=OTHER)
    assert taken == ["third", "second", "first"]
    assert len(result.accepted) == 3 and result.rejected == []
    assert drop_names(layout) == [] and not layout.jc_input.exists()


def test_drain_without_an_operator_directory_is_the_plain_intake(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    layout.ensure_intake()
    layout.jc_input.write_text("hello")
    result = operator_drop.drain(layout, intake.drain_operator)
    assert len(result.accepted) == 1 and not layout.jc_input.exists()


def test_rename_noreplace(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(a, b)
    assert a.read_text() == "A" and b.read_text() == "B"
    with pytest.raises(FileNotFoundError):
        fsutil.rename_noreplace(tmp_path / "missing", tmp_path / "c")
    b.unlink()
    fsutil.rename_noreplace(a, b)
    assert b.read_text() == "A" and not a.exists()


# ----- relay reply, status and topic as an operator ---------------------------------------


@pytest.fixture
def config(tmp_path: Path, layout: Layout) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"sessions: [session-1]\ndata_dir: {layout.root}\n"
        "ntfy: {server: 'http://127.0.0.1:9', topic: null}\n"
    )
    return path


@pytest.fixture
def operator(monkeypatch: pytest.MonkeyPatch, layout: Layout) -> None:
    """What a member of relay-operators meets: state/ may be entered, not written."""
    real = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) == layout.state and mode & os.W_OK:
            return False
        return real(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)


@pytest.mark.usefixtures("operator")
def test_an_operators_reply_goes_to_operator_and_never_waits(config: Path, layout: Layout) -> None:
    assert cli.main(["reply", "--config", str(config), "@session-1: hi"]) == 0
    assert cli.main(["reply", "--config", str(config), "and again"]) == 0
    assert not layout.jc_input.exists()
    texts = sorted((layout.operator_drop / n).read_text() for n in drop_names(layout))
    assert texts == ["@session-1: hi", "and again"]


@pytest.mark.usefixtures("operator")
def test_an_operator_without_operator_dir_is_told_who_may_reply(
    config: Path, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    layout.operator_drop.rmdir()
    assert cli.main(["reply", "--config", str(config), "hi"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "does not exist" in line and "sudo relay reply" in line


def test_a_user_who_may_not_reply_is_told_how_to_join(
    config: Path,
    layout: Layout,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Root ignores modes: inject what a user outside relay-operators meets on state/.
    real = os.stat

    def stat_(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if Path(str(path)) == layout.state:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat_)
    assert cli.main(["reply", "--config", str(config), "hi"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "relay-operators" in line and "sudo usermod -aG relay-operators $USER" in line


def test_root_replies_through_state_jc_input_as_relays_own_private_file(
    config: Path, layout: Layout
) -> None:
    assert cli.main(["reply", "--config", str(config), "as root"]) == 0
    st = layout.jc_input.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (layout.state.stat().st_uid, layout.state.stat().st_gid)
    assert drop_names(layout) == []


@pytest.mark.usefixtures("operator")
def test_an_operator_reads_the_topic_but_never_creates_it(
    config: Path, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["topic", "--config", str(config)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "no ntfy topic yet" in line and "sudo relay topic" in line
    assert not layout.topic.exists()
    layout.topic.write_text("relay-made-by-relay\n")
    assert cli.main(["topic", "--config", str(config)]) == 0
    assert "relay-made-by-relay" in capsys.readouterr().out


def test_the_topic_and_status_are_readable_by_the_operators_group(
    config: Path, layout: Layout
) -> None:
    from relay import status

    assert cli.main(["topic", "--config", str(config)]) == 0
    status.write(layout.status, {"state": "running"})
    for path in (layout.topic, layout.status):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_permission_denied_names_the_operators_group(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay import status

    def denied(path: Path) -> dict[str, object]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(status, "read", denied)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert cli.main(["status", "--config", str(config)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("relay: permission denied: ")
    assert "relay-operators" in line and "sudo usermod -aG relay-operators $USER" in line
