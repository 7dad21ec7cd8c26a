"""Channel management, one implementation for the admin API, the dashboard and the CLI.

Every change goes through ``channels_file.edit`` (locked, validated, atomic,
secrets encrypted), so the three paths and hand edits agree. Views never hold
a secret: a secret field shows only whether it is set.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pluggy

from . import channels_file
from . import config as config_mod
from .errors import ConfigError, Problem, SophonError
from .media import public_base
from .models import Channel, ChannelType, ConnectionResult
from .settings import Settings

CHANNEL_KEYS = ("id", "type", "name", "enabled", "config", "routing", "access", "limits")
PATCH_KEYS = ("name", "enabled", "config", "routing", "access", "limits")


class NotFound(SophonError):
    """No channel with that id."""


class Conflict(SophonError):
    """A channel with that id exists already."""


class BadRequest(SophonError):
    """The request body has the wrong shape (not the config's content: that is a ``ConfigError``)."""


@dataclass(frozen=True)
class Manager:
    """What management needs: the channels file and the installed plugins."""

    settings: Settings
    pm: pluggy.PluginManager
    types: Mapping[str, ChannelType]
    agents: Iterable[str]

    def load(self) -> config_mod.ChannelsConfig:
        return config_mod.load_file(self.settings.channels_path, self.types, self.pm, self.settings,
                                    agents=self.agents)

    def _edit(self, change) -> config_mod.ChannelsConfig:
        return channels_file.edit(self.settings.channels_path, change, pm=self.pm, types=self.types,
                                  agents=list(self.agents), settings=self.settings)

    def _item(self, data: dict, channel_id: str) -> dict:
        try:
            return channels_file.find(data, channel_id)
        except KeyError as exc:
            raise NotFound(exc.args[0]) from None

    # --- changes -------------------------------------------------------------------

    def create(self, body: Any) -> Channel:
        """Add a channel. ``enabled`` defaults to false here: add, test, then activate."""
        body = _object(body, "the channel")
        unknown = sorted(set(body) - set(CHANNEL_KEYS) - {"status"})
        if unknown:
            raise ConfigError("request", [Problem(str(body.get("id", "(new)")), k, "unknown field (allowed: "
                                                  + ", ".join(CHANNEL_KEYS) + ")") for k in unknown])
        item = {k: copy.deepcopy(body[k]) for k in CHANNEL_KEYS if k in body}
        item.setdefault("enabled", False)
        item.setdefault("config", {})
        item = {k: item[k] for k in CHANNEL_KEYS if k in item}  # the file's usual key order
        channel_id = item.get("id")

        def change(data: dict) -> None:
            if isinstance(channel_id, str) and any(
                    isinstance(c, dict) and c.get("id") == channel_id for c in data.get("channels", [])):
                raise Conflict(f"a channel with id {channel_id!r} exists already; choose another id")
            data.setdefault("channels", []).append(item)

        cfg = self._edit(change)
        return _get(cfg, channel_id)

    def update(self, channel_id: str, patch: Any) -> Channel:
        """Change some of a channel's fields.

        ``config`` is merged key by key: ``null`` removes an optional field, and a
        secret field that is absent, empty or ``null`` keeps its stored value.
        ``routing`` is merged too; ``access`` and ``limits`` are replaced.
        A changed ``config`` clears the last connection test's status.
        """
        patch = _object(patch, "the change")
        unknown = sorted(set(patch) - set(PATCH_KEYS))
        if unknown:
            raise ConfigError("request", [Problem(channel_id, k, "cannot be changed here (changeable: "
                                                  + ", ".join(PATCH_KEYS) + ")") for k in unknown])

        def change(data: dict) -> None:
            item = self._item(data, channel_id)
            secret = self.types[item["type"]].secret_fields if item.get("type") in self.types else frozenset()
            for key, value in patch.items():
                if key == "config":
                    value = _object(value, "config")
                    config = item.setdefault("config", {})
                    before = copy.deepcopy(config)
                    for name, v in value.items():
                        if name in secret and v in (None, ""):
                            continue
                        if v is None:
                            config.pop(name, None)
                        else:
                            config[name] = v
                    if config != before:  # the last test says nothing about the new config
                        item.pop("status", None)
                elif key == "routing":
                    routing = item.setdefault("routing", {})
                    for name, v in _object(value, "routing").items():
                        if v is None:
                            routing.pop(name, None)
                        else:
                            routing[name] = v
                elif value is None:
                    item.pop(key, None)
                else:
                    item[key] = copy.deepcopy(value)

        return _get(self._edit(change), channel_id)

    def set_enabled(self, channel_id: str, enabled: bool) -> Channel:
        return self.update(channel_id, {"enabled": enabled})

    def set_routing(self, channel_id: str, routing: Any) -> Channel:
        return self.update(channel_id, {"routing": _object(routing, "routing")})

    def remove(self, channel_id: str) -> None:
        def change(data: dict) -> None:
            data["channels"].remove(self._item(data, channel_id))

        self._edit(change)

    def test(self, channel_id: str) -> tuple[Channel, ConnectionResult]:
        """Run the plugin's connection test and record its status in channels.json."""
        cfg = self.load()
        channel = cfg.get(channel_id)
        if channel is None:
            raise NotFound(f"no channel {channel_id!r} (have: {', '.join(c.id for c in cfg.channels) or 'none'})")
        result = self.pm.hook.test_connection(channel=channel, settings=self.settings)
        if result is None:
            result = ConnectionResult(False, (("error", f"no plugin implements test_connection for type "
                                                        f"{channel.type!r}"),))

        def change(data: dict) -> None:
            self._item(data, channel_id)["status"] = result.status

        try:
            channel = _get(self._edit(change), channel_id)
        except (NotFound, ConfigError):
            pass  # removed or broken meanwhile: the result still stands
        return channel, result


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _get(cfg: config_mod.ChannelsConfig, channel_id: Any) -> Channel:
    channel = cfg.get(channel_id) if isinstance(channel_id, str) else None
    if channel is None:
        raise NotFound(f"no channel {channel_id!r}")
    return channel


def status_of(channel: Channel) -> str:
    """``disabled``, the last test's ``connected`` / ``error: <reason>``, or ``not tested``."""
    if not channel.enabled:
        return "disabled"
    return channel.status or "not tested"


def webhook_url(channel: Channel, ct: ChannelType | None, settings: Settings | None) -> str | None:
    """The URL to give the provider: the channel's own public URL field (see
    ``ChannelType.public_url_field``), else ``SOPHON_PUBLIC_URL``, plus the webhook path."""
    if ct is None:
        return None
    base = public_base(channel, ct, settings)
    return base + ct.webhook_path if base else None


def view(channel: Channel, types: Mapping[str, ChannelType], settings: Settings | None = None) -> dict:
    """A channel as the API and ``--json`` show it: secrets replaced by whether they are set.

    ``webhookUrl`` is null when no public base URL is configured (the dashboard then
    shows its own address)."""
    ct = types.get(channel.type)
    secret = ct.secret_fields if ct else frozenset()
    return {
        "id": channel.id,
        "type": channel.type,
        "typeName": ct.display_name if ct else channel.type,
        "name": channel.name,
        "enabled": channel.enabled,
        "status": status_of(channel),
        "lastTest": channel.status,
        "address": channel.address,
        "config": {k: v for k, v in channel.config.items() if k not in secret},
        "secrets": {name: isinstance(channel.config.get(name), str) for name in sorted(secret)},
        "routing": {"agentId": channel.routing.agent_id, "dmBehavior": channel.routing.dm_behavior},
        "access": {"mode": channel.access, "allow": sorted(channel.allow)},
        "limits": {"sendRate": channel.limits.send_rate,
                   "inboundPerSenderPerHour": channel.limits.inbound_per_sender_per_hour,
                   "dailyOutboundUnits": channel.limits.daily_outbound_units},
        "webhookPath": ct.webhook_path if ct else None,
        "webhookUrl": webhook_url(channel, ct, settings),
    }


def type_view(ct: ChannelType) -> dict:
    return {"name": ct.name, "displayName": ct.display_name, "configSchema": ct.config_schema,
            "secretFields": sorted(ct.secret_fields), "addressField": ct.address_field,
            "webhookPath": ct.webhook_path}


def result_view(channel_id: str, result: ConnectionResult) -> dict:
    return {"id": channel_id, "ok": result.ok, "status": result.status,
            "checks": [{"level": level, "message": message} for level, message in result.checks]}


def problems_view(problems: Iterable[Problem]) -> list[dict]:
    return [{"channel": p.channel_id, "path": p.path, "message": p.message, "level": p.level} for p in problems]
