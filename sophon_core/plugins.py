"""The one place that builds the plugin manager.

Plugins (built-in ones included) are found through the ``sophon`` entry point
group. ``SOPHON_PLUGINS=name1,name2`` limits loading to those entry point
names (``SOPHON_PLUGINS=`` with an empty value loads none).
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import SophonError
from .models import ChannelType

ENTRY_POINT_GROUP = hookspecs.PROJECT


class PluginError(SophonError):
    """A plugin could not be loaded or breaks the contract."""


def get_plugin_manager(extra: Iterable[object] = (), *, entrypoints: bool = True,
                       env: Mapping[str, str] | None = None) -> pluggy.PluginManager:
    """Build a fresh manager: hookspecs, entry point plugins, then ``extra``.

    :param extra: plugin objects to register too (tests register throwaway ones).
    :param entrypoints: load the ``sophon`` entry point group.
    :raises PluginError: a plugin failed to import or implements an unknown hook.
    """
    env = os.environ if env is None else env
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if entrypoints:
        allowed = env.get("SOPHON_PLUGINS")
        names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if names is not None and ep.name not in names:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # an installed plugin that cannot import
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            pm.register(plugin, name=ep.name)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc} (is a hook name misspelled? see sophon_core/hookspecs.py)") from exc
    return pm


def channel_types(pm: pluggy.PluginManager) -> dict[str, ChannelType]:
    """Every channel type the registered plugins declare, by name.

    :raises PluginError: a type is declared twice, or a plugin returned junk.
    """
    found: dict[str, ChannelType] = {}
    for types in pm.hook.sophon_channel_types():
        for ct in types or ():
            if not isinstance(ct, ChannelType):
                raise PluginError(f"a plugin returned {ct!r} from sophon_channel_types, "
                                  "expected sophon_core.models.ChannelType")
            if ct.name in found:
                raise PluginError(f"channel type {ct.name!r} is declared by two plugins "
                                  f"({', '.join(_plugin_names(pm))}); uninstall one")
            found[ct.name] = ct
    return found


def agents(pm: pluggy.PluginManager) -> dict[str, object]:
    """Every agent the registered plugins declare, by id.

    :raises PluginError: two agents share an id, or an agent lacks ``id``/``reply``.
    """
    found: dict[str, object] = {}
    for group in pm.hook.sophon_agents():
        for agent in group or ():
            agent_id = getattr(agent, "id", None)
            if not isinstance(agent_id, str) or not callable(getattr(agent, "reply", None)):
                raise PluginError(f"a plugin returned {agent!r} from sophon_agents; an agent needs "
                                  "a string `id` and a `reply(message, history)` method")
            if agent_id in found:
                raise PluginError(f"two installed plugins provide an agent with id {agent_id!r}; "
                                  "uninstall one or limit plugins with SOPHON_PLUGINS")
            found[agent_id] = agent
    return found


def _plugin_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(i.plugin_name for i in pm.hook.sophon_channel_types.get_hookimpls())
