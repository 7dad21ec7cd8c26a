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

from . import secrets
from .errors import ConfigError, Problem
from .models import Channel, ChannelType, Limits, Routing
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
              settings: Settings, agents: Iterable[str] | None = None) -> ChannelsConfig:
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
    return validate_data(data, types, pm, settings, source=source, agents=agents)


def validate_data(data: Any, types: Mapping[str, ChannelType], pm: pluggy.PluginManager,
                  settings: Settings, source: str = "channels.json",
                  agents: Iterable[str] | None = None) -> ChannelsConfig:
    """Validate already-parsed JSON; see ``load_file``.

    Every problem is collected in one pass: envelope, per-type schemas, the
    plugins' ``validate_config``, duplicates and (when ``agents`` is given)
    unknown ``routing.agentId`` values. No message shows a secret's value.
    Encrypted secrets (``enc:v1:...``) are decrypted: the returned channels hold
    plain values; a plaintext secret is accepted with a warning.
    """
    data = normalize(data)
    keyring: dict = {}  # loaded on the first encrypted value
    opened: set[str] = set()  # decrypted secret values: never in a message either
    problems: list[Problem] = []
    raw_channels = data.get("channels") if isinstance(data, dict) else None
    raw_channels = raw_channels if isinstance(raw_channels, list) else []

    def label(index: int) -> str:
        item = raw_channels[index] if index < len(raw_channels) else None
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            return item["id"]
        return f"channels[{index}]"

    for err in jsonschema.Draft202012Validator(_ENVELOPE).iter_errors(data):
        p = _error_path(err)
        if len(p) >= 2 and p[0] == "channels" and isinstance(p[1], int):
            problems.append(Problem(label(p[1]), _dotted(p[2:]), _message(err, {})))
        else:
            problems.append(Problem("(file)", _dotted(p), _message(err, {})))

    channels: list[Channel] = []
    for index, item in enumerate(raw_channels):
        if not isinstance(item, dict):
            continue
        cid = label(index)
        ctype, config = item.get("type"), item.get("config")
        if not isinstance(ctype, str) or not isinstance(config, dict):
            continue  # already reported by the envelope schema
        if ctype not in types:
            installed = ", ".join(sorted(types)) or "none"
            problems.append(Problem(cid, "type", f"unknown channel type {ctype!r} (installed: "
                                    f"{installed}); install its plugin or fix the type"))
            continue
        ct = types[ctype]
        config, secret_problems = _open_secrets(cid, ct, config, settings, keyring)
        opened.update(v for k, v in config.items() if k in ct.secret_fields and isinstance(v, str))
        problems.extend(secret_problems)
        if any(p.level == "error" for p in secret_problems):
            continue
        config_errors = list(jsonschema.Draft202012Validator(ct.config_schema).iter_errors(config))
        for err in config_errors:
            problems.append(Problem(cid, _dotted(["config", *_error_path(err)]),
                                    _message(err, ct.config_schema)))
        if not config_errors:
            problems.extend(pm.hook.validate_config(channel_type=ctype, channel_id=cid, config=config,
                                                    settings=settings) or ())
        routing = item.get("routing") if isinstance(item.get("routing"), dict) else {}
        access = item.get("access") if isinstance(item.get("access"), dict) else {}
        limits = item.get("limits") if isinstance(item.get("limits"), dict) else {}
        mode = access.get("mode", "open")
        if mode == "open" and routing.get("dmBehavior", "main-session") == "main-session":
            problems.append(Problem(cid, "routing.dmBehavior", "main-session on an open channel: every "
                                    "stranger who texts shares one session with everyone else; use "
                                    "per-peer, or access.mode allowlist", level="warning"))
        channels.append(Channel(
            id=cid, type=ctype, name=item.get("name") if isinstance(item.get("name"), str) else cid,
            enabled=item.get("enabled", True) is True, config=dict(config),
            routing=Routing(agent_id=routing.get("agentId", "default"),
                            dm_behavior=routing.get("dmBehavior", "main-session")),
            status=item.get("status") if isinstance(item.get("status"), str) else None,
            address=_address(config, ct),
            access=mode if mode in ("open", "allowlist") else "open",
            allow=frozenset(a for a in access.get("allow", ()) if isinstance(a, str)),
            limits=Limits(send_rate=limits.get("sendRate"),
                          inbound_per_sender_per_hour=limits.get("inboundPerSenderPerHour", 60),
                          daily_outbound_units=limits.get("dailyOutboundUnits", 2000)),
        ))

    problems.extend(_duplicates(channels, types))
    if agents is not None:
        known = sorted(agents)
        problems.extend(
            Problem(c.id, "routing.agentId", f"no agent {c.routing.agent_id!r} is installed "
                    f"(installed: {', '.join(known) or 'none'})")
            for c in channels if isinstance(c.routing.agent_id, str) and c.routing.agent_id not in known)
    problems = _scrub(problems, data, types, opened)
    if any(p.level == "error" for p in problems):
        raise ConfigError(source, problems)
    return ChannelsConfig(source, tuple(channels), tuple(p for p in problems if p.level != "error"))


def _open_secrets(cid: str, ct: ChannelType, config: dict, settings: Settings,
                  keyring: dict) -> tuple[dict, list[Problem]]:
    """The config with its secret fields decrypted, and the problems found doing it."""
    out, problems = dict(config), []
    for name in sorted(ct.secret_fields):
        value = out.get(name)
        if not isinstance(value, str):
            continue
        if not secrets.is_encrypted(value):
            problems.append(Problem(cid, f"config.{name}", "is stored in plain text; Sophon encrypts it the next "
                                    "time it writes the file, or now with `sophon channels encrypt`",
                                    level="warning"))
            continue
        if "ring" not in keyring:
            try:
                keyring["ring"] = secrets.Keyring.load(settings)
            except secrets.SecretKeyError as exc:
                keyring["ring"], keyring["error"] = None, str(exc)
        ring = keyring["ring"]
        where = f"{secrets.ENV} or {secrets.key_file(settings)}"
        if ring is None:
            problems.append(Problem(cid, f"config.{name}", keyring.get("error") or (
                f"is encrypted but there is no key ({where} is missing): restore the key it was "
                "encrypted with, or type the secret again in plain text")))
            continue
        try:
            out[name] = ring.decrypt(value)
        except (secrets.InvalidToken, ValueError):
            problems.append(Problem(cid, f"config.{name}", f"cannot be decrypted with the key from {ring.source}: "
                                    "it was encrypted with another key; set that key (SOPHON_SECRET_KEY accepts "
                                    "several, comma-separated) or type the secret again in plain text"))
    return out, problems


def combined_schema(types: Mapping[str, ChannelType]) -> dict:
    """The envelope schema with each installed type's config schema wired in, for
    editors (``"$schema"`` in channels.json): validation and completion of ``config``."""
    import copy

    schema = copy.deepcopy(_ENVELOPE)
    schema["$id"] = "https://sophon.dev/schemas/channels.schema.json"
    channel = schema["$defs"]["channel"]
    channel["properties"]["type"]["enum"] = sorted(types)
    rules = []
    for name in sorted(types):
        sub = {k: v for k, v in types[name].config_schema.items() if k not in ("$schema", "$id")}
        rules.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                      "then": {"properties": {"config": sub}}})
    channel["allOf"] = rules
    return schema


def _address(config: Mapping[str, Any], ct: ChannelType) -> str | None:
    value = config.get(ct.address_field) if ct.address_field else None
    return value if isinstance(value, str) else None


def _scrub(problems: list[Problem], data: Any, types: Mapping[str, ChannelType],
           opened: Iterable[str] = ()) -> list[Problem]:
    """Belt and braces: replace any secret value (as in the file, and decrypted) by ``***``
    in every message, e.g. a token pasted into the wrong field."""
    secrets = {s for s in opened if len(s) >= 6}
    for item in (data.get("channels") if isinstance(data, dict) else None) or ():
        config = item.get("config") if isinstance(item, dict) else None
        if not isinstance(config, dict):
            continue
        for ct in types.values():
            for name in ct.secret_fields:
                value = config.get(name)
                if isinstance(value, str) and len(value) >= 6:
                    secrets.add(value)
    if not secrets:
        return problems
    out = []
    for p in problems:
        message = p.message
        for secret in sorted(secrets, key=len, reverse=True):
            message = message.replace(secret, "***")
        out.append(Problem(p.channel_id, p.path, message, p.level))
    return out


def normalize(data: Any) -> Any:
    """The canonical ``{"channels": [...]}`` form of a bare list or a single channel."""
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
                                    f"each {field_name} can belong to one channel only"))
        else:
            claimed.setdefault(key, c.id)
    return problems


def _error_path(err: jsonschema.ValidationError) -> list[Any]:
    """Where the error is; a missing required field is reported at the field itself
    (``config.authToken``), so forms can show it next to that field."""
    path = list(err.absolute_path)
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = next((n for n in err.validator_value if n not in err.instance), None)
        if missing is not None:
            path.append(missing)
    return path


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
    shown = _show(err.instance, secret)
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
    bounds = {"minimum": "at least", "exclusiveMinimum": "greater than", "maximum": "at most",
              "exclusiveMaximum": "less than"}
    if v in bounds:
        return f"{shown} must be {bounds[v]} {err.validator_value}"
    if v == "uniqueItems":
        return f"{shown} lists an entry more than once"
    if v in ("minLength", "maxLength"):
        return f"{'value' if secret else shown} is too {'short' if v == 'minLength' else 'long'} ({v} {err.validator_value})"
    return f"{shown} fails the schema's {v!r} rule"


def _show(value: Any, secret: bool) -> str:
    """How a failing value appears in a message: never a secret, never a whole object."""
    if secret:
        return "(hidden)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
