"""Load and validate ``channels.json``: every problem reported at once.

The file is ``{"channels": [ {...}, ... ]}``. A bare list of channels, or a
single channel object (as in the SMS product page), is accepted too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import pluggy

from .errors import ConfigError, Problem
from .models import Channel, ChannelType, Routing
from .settings import Settings

_ENVELOPE = json.loads(files("sophon_core.schemas").joinpath("channels-file.schema.json").read_text())


@dataclass(frozen=True)
class ChannelsConfig:
    """A valid ``channels.json``."""

    source: str
    channels: tuple[Channel, ...]
    warnings: tuple[Problem, ...] = field(default=())

    def get(self, channel_id: str) -> Channel | None:
        return next((c for c in self.channels if c.id == channel_id), None)

    def of_type(self, type_name: str) -> tuple[Channel, ...]:
        return tuple(c for c in self.channels if c.type == type_name)


def load_file(path: Path, types: Mapping[str, ChannelType], pm: pluggy.PluginManager,
              settings: Settings) -> ChannelsConfig:
    """Read and validate ``path``.

    :raises ConfigError: listing every problem (unreadable file, bad JSON,
        schema errors, unknown types, duplicates).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [Problem("(file)", "", f"{source} does not exist: create it "
                                           "(see README, 'Configuration') or point SOPHON_CHANNELS at it")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem("(file)", "", f"cannot read {source}: {exc}")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [Problem("(file)", f"line {exc.lineno} column {exc.colno}",
                                           f"not valid JSON: {exc.msg}")]) from None
    return validate_data(data, types, pm, settings, source=source)


def validate_data(data: Any, types: Mapping[str, ChannelType], pm: pluggy.PluginManager,
                  settings: Settings, source: str = "channels.json") -> ChannelsConfig:
    """Validate already-parsed JSON; see ``load_file``."""
    data = _normalize(data)
    problems: list[Problem] = []
    envelope_errors = list(jsonschema.Draft202012Validator(_ENVELOPE).iter_errors(data))
    raw_channels = data.get("channels") if isinstance(data, dict) else None
    raw_channels = raw_channels if isinstance(raw_channels, list) else []

    def label(index: int) -> str:
        item = raw_channels[index] if index < len(raw_channels) else None
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            return item["id"]
        return f"channels[{index}]"

    for err in envelope_errors:
        p = list(err.absolute_path)
        if len(p) >= 2 and p[0] == "channels" and isinstance(p[1], int):
            problems.append(Problem(label(p[1]), _dotted(p[2:]), _message(err, {})))
        else:
            problems.append(Problem("(file)", _dotted(p), _message(err, {})))

    channels: list[Channel] = []
    for index, item in enumerate(raw_channels):
        if not isinstance(item, dict):
            continue
        cid = label(index)
        ctype = item.get("type")
        config = item.get("config")
        if not isinstance(ctype, str) or not isinstance(config, dict):
            continue  # already reported by the envelope schema
        if ctype not in types:
            installed = ", ".join(sorted(types)) or "none"
            problems.append(Problem(cid, "type", f"unknown channel type {ctype!r} (installed: "
                                    f"{installed}); install its plugin or fix the type"))
            continue
        ct = types[ctype]
        config_errors = list(jsonschema.Draft202012Validator(ct.config_schema).iter_errors(config))
        for err in config_errors:
            problems.append(Problem(cid, _dotted(["config", *err.absolute_path]),
                                    _message(err, ct.config_schema)))
        if config_errors:
            continue
        extra = pm.hook.validate_config(channel_type=ctype, channel_id=cid, config=config,
                                        settings=settings)
        problems.extend(extra or ())
        routing = item.get("routing") or {}
        channels.append(Channel(
            id=cid, type=ctype, name=item.get("name") or cid,
            enabled=item.get("enabled", True), config=dict(config),
            routing=Routing(agent_id=routing.get("agentId", "default"),
                            dm_behavior=routing.get("dmBehavior", "main-session")),
            status=item.get("status"),
            address=config.get(ct.address_field) if ct.address_field else None,
        ))

    problems.extend(_duplicates(channels, types))
    config = ChannelsConfig(source, tuple(channels), tuple(p for p in problems if p.level != "error"))
    if any(p.level == "error" for p in problems):
        raise ConfigError(source, problems)
    return config


def check_agents(config: ChannelsConfig, known: Iterable[str]) -> list[Problem]:
    """Problems for channels whose ``routing.agentId`` names no installed agent."""
    known = sorted(known)
    return [Problem(c.id, "routing.agentId", f"no agent {c.routing.agent_id!r} is installed "
                    f"(installed: {', '.join(known) or 'none'})")
            for c in config.channels if c.routing.agent_id not in known]


def _normalize(data: Any) -> Any:
    if isinstance(data, list):
        return {"channels": data}
    if isinstance(data, dict) and "channels" not in data and "type" in data and "id" in data:
        return {"channels": [data]}  # a single channel, as in the product page example
    return data


def _duplicates(channels: list[Channel], types: Mapping[str, ChannelType]) -> list[Problem]:
    problems = []
    seen_ids: dict[str, int] = {}
    for c in channels:
        seen_ids[c.id] = seen_ids.get(c.id, 0) + 1
    for cid, n in seen_ids.items():
        if n > 1:
            problems.append(Problem(cid, "id", f"{n} channels share the id {cid!r}; ids must be unique"))
    claimed: dict[tuple[str, str], str] = {}
    for c in channels:
        if c.address is None:
            continue
        key = (c.type, c.address)
        if key in claimed and claimed[key] != c.id:
            field_name = types[c.type].address_field
            problems.append(Problem(c.id, f"config.{field_name}",
                                    f"{c.address} is already used by channel {claimed[key]!r}; "
                                    "each number can belong to one channel"))
        else:
            claimed.setdefault(key, c.id)
    return problems


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _subschema(schema: Mapping[str, Any], path: Iterable[Any]) -> Mapping[str, Any]:
    node: Any = schema
    for part in path:
        if not isinstance(node, Mapping):
            return {}
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return node if isinstance(node, Mapping) else {}


def _message(err: jsonschema.ValidationError, root: Mapping[str, Any]) -> str:
    """A fix-it message for one schema error. Never shows a secret's value."""
    schema = err.schema if isinstance(err.schema, Mapping) else {}
    secret = bool(schema.get("writeOnly")) or bool(_subschema(root, err.absolute_path).get("writeOnly"))
    shown = "(hidden)" if secret else repr(err.instance)
    v = err.validator
    if v == "required":
        name = next((n for n in err.validator_value if n not in err.instance), "?")
        desc = schema.get("properties", {}).get(name, {}).get("description")
        return f"missing required field {name!r}" + (f" ({desc})" if desc else "")
    if v == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        extra = sorted(set(err.instance) - set(schema.get("properties", {})))
        return f"unknown field(s) {', '.join(map(repr, extra))} (allowed: {allowed})"
    if "x-errorMessage" in schema:
        return f"{shown} {schema['x-errorMessage']}"
    if v == "type":
        return f"{shown} should be of type {err.validator_value}"
    if v == "enum":
        return f"{shown} is not one of: {', '.join(map(str, err.validator_value))}"
    if v in ("pattern", "format"):
        return f"{shown} does not match the expected format ({err.validator_value})"
    if v in ("minLength", "maxLength"):
        return f"{'value' if secret else shown} is too {'short' if v == 'minLength' else 'long'} ({v} {err.validator_value})"
    return err.message if not secret else f"invalid value ({v})"
