"""Everything a running Sophon process holds: plugins, config, agents, store, pipeline."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pluggy

from . import config as config_mod
from .media import MediaFiles
from .models import ChannelType
from .plugins import agents as find_agents
from .plugins import channel_types, get_plugin_manager
from .settings import Settings
from .store import Store
from .pipeline import Pipeline
from .errors import ConfigError

log = logging.getLogger("sophon.config")
RELOAD_EVERY = 1.0  # seconds between checks of channels.json


def _signature(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class Runtime:
    settings: Settings
    pm: pluggy.PluginManager
    types: Mapping[str, ChannelType]
    config: config_mod.ChannelsConfig
    agents: Mapping[str, object]
    store: Store
    pipeline: Pipeline | None = field(default=None)
    media: MediaFiles | None = field(default=None)
    _file_seen: tuple | None = field(default=None, repr=False)
    _checked_at: float = field(default=0.0, repr=False)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings | None = None, *, extra_plugins: Iterable[object] = (),
              entrypoints: bool = True) -> "Runtime":
        """Load plugins and ``channels.json``; open the store.

        :raises ConfigError: the channels file is invalid (every problem listed).
        :raises PluginError: a plugin is broken.
        """
        settings = settings or Settings.from_env()
        pm = get_plugin_manager(extra_plugins, entrypoints=entrypoints, env=settings.env)
        types = channel_types(pm)
        known = find_agents(pm)
        cfg = config_mod.load_file(settings.channels_path, types, pm, settings, agents=known)
        rt = cls(settings, pm, types, cfg, known, Store(settings.data_dir / "sophon.db", settings.sqlite_synchronous))
        rt.pipeline = Pipeline(rt)
        rt.media = MediaFiles(settings.data_dir, settings.media_url_ttl)
        rt._file_seen = _signature(settings.channels_path)
        return rt

    def reload_if_changed(self, every: float = RELOAD_EVERY) -> bool:
        """Pick up a changed ``channels.json`` (checked at most every ``every`` seconds).

        An invalid file is logged and ignored: the last good config keeps serving.
        One thread checks and loads at a time; a thread that calls while another loads waits
        for it and then sees the new config (a request or a runner never goes on with the
        old one once the file's change has been seen).
        :return: True when this call loaded a new config.
        """
        if time.monotonic() - self._checked_at < every:  # (the usual case: no lock)
            return False
        with self._reload_lock:
            now = time.monotonic()
            if now - self._checked_at < every:  # another thread checked meanwhile
                return False
            seen = _signature(self.settings.channels_path)
            if seen == self._file_seen:
                self._checked_at = now
                return False
            try:
                cfg = config_mod.load_file(self.settings.channels_path, self.types, self.pm, self.settings,
                                           agents=self.agents)
            except ConfigError as exc:
                log.error("%s changed but is not valid; still serving the last good configuration.\n%s",
                          self.settings.channels_path, exc)
                return False
            else:
                self.config = cfg
            finally:  # (an invalid file is not read again until it changes)
                self._file_seen, self._checked_at = seen, now
        log.info("reloaded %s: active channels: %s", cfg.source,
                 ", ".join(c.id for c in cfg.channels if c.enabled) or "none")
        return True

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.shutdown(wait=True)
        self.store.close()

