"""The long-running loop: `relay serve` (under systemd) and `relay run` (foreground).

Event-driven with inotify, never polling: it wakes when the inbox gains an item, when a
session deletes its input.txt, when the API call finishes (a pipe), on a signal, or when
the watchdog or a backoff timer is due. `run` also does the intake handlers' work, so
one process covers everything with the same code paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import select
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from types import FrameType

from inotify_simple import INotify
from inotify_simple import flags as in_flags

from relay import intake, reload, systemd
from relay.api import AnthropicApi, MessagesApi
from relay.clock import wall_clock
from relay.config import Config, find_ntfy_token, load_config
from relay.engine import ApiFactory, Engine
from relay.errors import RelayError
from relay.layout import Layout
from relay.ledger import iso
from relay.log import event
from relay.ntfy import Notifier
from relay.records import ReloadResult
from relay.subscriber import Subscriber
from relay.topic import resolve_reply_topic, resolve_topic, subscribe_url

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
INTAKE_RETRY_S = 0.5


def real_api(key: str, config: Config) -> MessagesApi:
    return AnthropicApi(key, config.anthropic.base_url, config.anthropic.timeout_s)


@contextlib.contextmanager
def exclusive_lock(layout: Layout) -> Iterator[None]:
    """One conversation process per data directory: it alone writes history and dispatch."""
    layout.ensure_intake()
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RelayError(
                f"another relay process is already running on {layout.root} "
                f"(it holds {layout.lock})"
            ) from None
        yield
    finally:
        os.close(fd)


class Service:
    def __init__(
        self,
        config: Config,
        *,
        with_intake: bool,
        environ: Mapping[str, str] | None = None,
        api_factory: ApiFactory = real_api,
    ) -> None:
        self.config = config
        self.layout = Layout(config.data_dir)
        self.with_intake = with_intake
        self.environ = os.environ if environ is None else environ
        self.sd = systemd.Notifier(self.environ)
        self.stopping = False
        self.reload_requested = False
        self.reloads = 0  # this process's, for status.json's last_reload.seq
        topic = answer_url = None
        if config.ntfy.server:
            topic = resolve_topic(config, self.layout)
            reply_topic = resolve_reply_topic(config, self.layout)
            answer_url = subscribe_url(config, reply_topic) if reply_topic else None
        token, _ = find_ntfy_token(config, self.environ)
        self.notifier = Notifier(config.ntfy.server, topic, config.ntfy.timeout_s, token)
        self.engine = Engine(
            config,
            self.layout,
            api_factory,
            self.notifier,
            self.environ,
            wall=wall_clock(self.environ),
            answer_url=answer_url,
        )
        # `relay run` does everything in one process, the answer subscriber too (on a
        # thread: it only hands answers over through jc_input.txt, as its unit does).
        self.subscriber: Subscriber | None = None
        if with_intake and config.ntfy.server:
            self.subscriber = Subscriber(config, self.layout, self.environ)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.stopping = True
        self.engine.caller.wake()
        if self.subscriber is not None:
            self.subscriber.stop()

    def request_reload(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """SIGHUP: the loop reloads at its next turn (a signal handler must not do the
        work: it may interrupt the loop anywhere)."""
        self.reload_requested = True
        self.engine.caller.wake()

    def reload(self) -> bool:
        """Re-read the config file and apply it, or refuse it and keep the running one;
        True when it was applied. systemd hears RELOADING=1 … READY=1 either way, and
        status.json's last_reload says how it went (`relay reload` waits for it)."""
        self.reload_requested = False
        self.sd.reloading()
        decision = reload.decide(self.config, load_config)
        errors = list(decision.errors)
        if decision.config is not None:
            try:
                self._apply(decision.config)
            except OSError as exc:  # the new sessions' directories: nothing has changed
                errors.append(f"cannot create the new sessions' directories: {exc}")
            except Exception as exc:  # a reload must never stop the service
                log.exception("reload failed")
                errors.append(f"relay failed applying it ({type(exc).__name__}: {exc})")
        self.reloads += 1
        engine = self.engine
        ok = not errors
        engine.last_reload = ReloadResult(
            self.reloads, iso(engine.wall()), ok, tuple(errors), decision.changed if ok else ()
        )
        source = self.config.source
        if ok:
            event(log, "reloaded", "reloaded %s: %s", source, reload.summary(decision.changed))
        else:
            event(
                log,
                "reload_refused",
                "reload of %s refused, the running configuration stays: %s",
                source,
                "; ".join(errors),
                level=logging.ERROR,
            )
        engine.last_snapshot = engine.snapshot()
        self.sd.ready(engine.last_snapshot.line())
        engine.write_status(engine.last_snapshot, force=True)
        return ok

    def _apply(self, config: Config) -> None:
        """Everything that may fail comes before the first change, so a failure leaves the
        running configuration whole."""
        retarget = config.ntfy != self.config.ntfy
        topic: str | None = None
        token: str | None = None
        if retarget:
            # Only the push time-out can differ here (relay/reload.py refuses the rest); the
            # token is looked up again with it (a `.env` may have changed).
            topic = resolve_topic(config, self.layout) if config.ntfy.server else None
            token, _ = find_ntfy_token(config, self.environ)
        self.engine.reconfigure(config)  # may fail first (the new sessions' directories)
        self.config = config
        if retarget:
            self.notifier.configure(topic, config.ntfy.timeout_s, token)

    def _rewatch(
        self, poller: select.poll, inotify: INotify, names: dict[int, str]
    ) -> tuple[INotify, dict[int, str]]:
        """Watches for the sessions a reload added: the new ones first, so nothing falls
        between (the next tick looks at everything anyway). If they cannot be made (the
        inotify limits), the old ones stay and the loop still looks at least every 30 s."""
        try:
            fresh, fresh_names = self._watch()
        except OSError as exc:
            log.error("cannot watch the new sessions' directories: %s", exc)
            return inotify, names
        poller.register(fresh.fd, select.POLLIN)
        poller.unregister(inotify.fd)
        inotify.close()
        return fresh, fresh_names

    def _watch(self) -> tuple[INotify, dict[int, str]]:
        """The inotify watches, and for each watch the one name that matters in it ("" for
        any name not starting with a dot). Events relay causes itself (its temp files,
        status.json, the spool's dot-files) must not wake the loop, or a write that keeps
        failing would keep it spinning."""
        inotify = INotify()
        arrive = in_flags.MOVED_TO | in_flags.CLOSE_WRITE | in_flags.CREATE
        names = {inotify.add_watch(self.layout.inbox, arrive): ""}
        for session in self.config.sessions:
            wd = inotify.add_watch(
                self.layout.session_dir(session), in_flags.DELETE | in_flags.MOVED_FROM
            )
            names[wd] = "input.txt"
        if self.with_intake:
            names[inotify.add_watch(self.layout.queue, arrive | in_flags.ATTRIB)] = ""
            # `relay reply` links jc_input.txt into place (IN_CREATE); editors rename it.
            names[inotify.add_watch(self.layout.state, arrive)] = self.layout.jc_input.name
        return inotify, names

    @staticmethod
    def _relevant(inotify: INotify, names: dict[int, str]) -> bool:
        relevant = False
        with contextlib.suppress(BlockingIOError):
            for ev in inotify.read(timeout=0):
                wanted = names.get(ev.wd)
                if wanted is None or ev.mask & in_flags.Q_OVERFLOW:
                    relevant = True  # an overflow may hide anything: look
                elif wanted:
                    relevant |= ev.name == wanted
                else:
                    relevant |= not ev.name.startswith(".")
        return relevant

    def run(self) -> int:
        with exclusive_lock(self.layout):
            return self._run_locked()

    def _run_locked(self) -> int:
        engine = self.engine
        if self.sd.enabled:
            # Recovery of a large history could exceed the start timeout on a slow disk.
            self.sd.extend_timeout(60)
        engine.recover()
        if self.with_intake:
            self._intake()
        inotify, names = self._watch()
        poller = select.poll()
        poller.register(inotify.fd, select.POLLIN)
        poller.register(engine.caller.wake_fd, select.POLLIN)
        engine.last_snapshot = engine.snapshot()
        if self.subscriber is not None:
            threading.Thread(target=self.subscriber.run, name="answers", daemon=True).start()
        self.sd.ready(engine.last_snapshot.line())
        log.info(
            "relay %s: %s", "run" if self.with_intake else "serve", engine.last_snapshot.line()
        )
        interval = self.sd.watchdog_interval_s
        last_ping = time.monotonic()
        last_status = ""
        try:
            while not self.stopping:
                if self.reload_requested and self.reload():
                    inotify, names = self._rewatch(poller, inotify, names)
                retry_in = self._intake() if self.with_intake else None
                timeout = engine.tick()
                if retry_in is not None:
                    timeout = min(timeout, retry_in)
                if interval is not None:
                    timeout = min(timeout, interval * 0.5)
                line = engine.status_line()
                if line != last_status:
                    self.sd.status(line)
                    last_status = line
                deadline = time.monotonic() + timeout
                while not self.stopping:
                    now = time.monotonic()
                    if interval is not None and now - last_ping >= interval * 0.5:
                        # From the main loop itself: a wedged loop stops the pings.
                        self.sd.watchdog()
                        last_ping = now
                    left = deadline - now
                    if left <= 0:
                        break
                    ready = {fd for fd, _ in poller.poll(math.ceil(left * 1000))}
                    if engine.caller.wake_fd in ready or (
                        inotify.fd in ready and self._relevant(inotify, names)
                    ):
                        break
        finally:
            self.sd.stopping()
            engine.wait_inflight(STOP_GRACE_S)
            if engine.busy:
                engine.tick(start_new=False)
            engine.write_status(engine.snapshot("stopped"), force=True)
            self.notifier.close(wait_s=1.0)
            engine.close(graceful=True)
            inotify.close()
            self.sd.close()
        return 0

    def _intake(self) -> float | None:
        """Drain the queue and the operator's input; returns when to look again, if
        something is left (another intake run held it, a file still being written, a full
        disk). Never waits, and never stops the loop: the watchdog must keep its pings."""
        try:
            operator = intake.drain_operator(self.layout, wait=False)
            queue = intake.drain_queue(self.config, self.layout, wait=False)
        except OSError as exc:
            log.error("intake: %s; trying again in %ds", exc, intake.ERROR_RETRY_S)
            return intake.ERROR_RETRY_S
        except Exception:
            log.exception("intake failed; trying again in %ds", intake.ERROR_RETRY_S)
            return intake.ERROR_RETRY_S
        if not (operator.ran and queue.ran):
            return INTAKE_RETRY_S
        return queue.retry_in


def install_signal_handlers(service: Service) -> None:
    signal.signal(signal.SIGTERM, service.request_stop)
    signal.signal(signal.SIGINT, service.request_stop)
    signal.signal(signal.SIGHUP, service.request_reload)
