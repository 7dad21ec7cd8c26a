"""Everything a running Sophon process holds: plugins, config, agents, store, pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import pluggy

from . import config as config_mod
from .models import ChannelType
from .plugins import agents as find_agents
from .plugins import channel_types, get_plugin_manager
from .settings import Settings
from .store import Store
from .pipeline import Pipeline


@dataclass
class Runtime:
    settings: Settings
    pm: pluggy.PluginManager
    types: Mapping[str, ChannelType]
    config: config_mod.ChannelsConfig
    agents: Mapping[str, object]
    store: Store
    pipeline: Pipeline | None = field(default=None)

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
        return rt

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.shutdown(wait=True)

