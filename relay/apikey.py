"""Watching for the API key: it may appear (or change) while relay runs, e.g. a `.env`
written after start. Looked up at most every KEY_RECHECK_S; the key is never logged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from relay.api import MessagesApi
from relay.config import Config, find_api_key

log = logging.getLogger(__name__)

KEY_RECHECK_S = 5.0

ApiFactory = Callable[[str, Config], MessagesApi]


class KeyWatch:
    def __init__(self, config: Config, environ: Mapping[str, str], factory: ApiFactory) -> None:
        self.config = config
        self.environ = environ
        self.factory = factory
        self.api: MessagesApi | None = None
        self.help = ""  # what was looked at, while there is no key
        self._key: str | None = None
        self._checked = -1e9

    def reconfigure(self, config: Config) -> None:
        """Use `config` from now on (a reload); a changed base URL or time-out gets a new
        client for the same key (a call in flight keeps the one it started with)."""
        rebuild = config.anthropic != self.config.anthropic
        self.config = config
        if rebuild and self.api is not None and self._key is not None:
            self.api = self.factory(self._key, config)

    def refresh(self, now: float, force: bool = False) -> None:
        if not force and now - self._checked < KEY_RECHECK_S:
            return
        self._checked = now
        key, where = find_api_key(self.config, self.environ)
        if key == self._key and (key is not None or self.help):
            return
        self._key = key
        if key is None:
            self.api, self.help = None, where
            log.warning("%s", where)
            return
        self.help = ""
        self.api = self.factory(key, self.config)
        log.info("API key found (%s)", where)  # where, never the key itself
