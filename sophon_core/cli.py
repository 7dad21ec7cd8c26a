"""The ``sophon`` command. Plugins add their own commands through ``sophon_commands``."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from . import config as config_mod
from .errors import ConfigError, SophonError
from .plugins import PluginError, agents, channel_types, get_plugin_manager
from .server import DEFAULT_THREADS
from .settings import Settings


@click.group()
def cli() -> None:
    """Sophon channels: put your bot on SMS (and more) through plugins."""


def fail(message: str, as_json: bool = False, problems=(), code: int = 1, **extra) -> None:
    """Report a failure (JSON on stdout with ``--json``, words on stderr otherwise) and exit."""
    from .manage import problems_view

    if as_json:
        click.echo(json.dumps({"ok": False, "error": message, "errors": problems_view(problems), **extra},
                              indent=2))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: str | None, as_json: bool = False):
    """(settings, pm, types, config); exits 1 with every problem listed when invalid."""
    try:
        settings = Settings.from_env()
        if path:
            settings = replace(settings, channels_path=Path(path))
        pm = get_plugin_manager(env=settings.env)
        types = channel_types(pm)
        cfg = config_mod.load_file(settings.channels_path, types, pm, settings, agents=agents(pm))
    except ConfigError as exc:
        if as_json:
            fail(f"{exc.source} is invalid", True, exc.problems + exc.warnings)
        click.echo(f"error: {exc}", err=True)
        for w in exc.warnings:
            click.echo(f"warning: {w}", err=True)
        sys.exit(1)
    except (SophonError, ValueError) as exc:
        fail(str(exc), as_json)
    if not as_json:
        for w in cfg.warnings:
            click.echo(f"warning: {w}", err=True)
    return settings, pm, types, cfg


def _manager(as_json: bool = False):
    from .manage import Manager

    settings, pm, types, cfg = load_or_exit(None, as_json)
    return Manager(settings, pm, types, list(agents(pm))), cfg


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")


def _validate(path: str | None, as_json: bool) -> None:
    from .manage import problems_view

    _, _, types, cfg = load_or_exit(path, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, "source": cfg.source, "channels": [c.id for c in cfg.channels],
                               "warnings": problems_view(cfg.warnings)}, indent=2))
        return
    listed = ", ".join(f"{c.id} ({c.type}, {'enabled' if c.enabled else 'disabled'})" for c in cfg.channels)
    click.echo(f"{cfg.source} is valid: {len(cfg.channels)} channel(s){': ' + listed if listed else ''}")


@cli.command()
@click.argument("path", required=False)
@JSON_OPTION
def validate(path: str | None, as_json: bool) -> None:
    """Check channels.json (or PATH) without starting anything. Exit 1 when invalid."""
    _validate(path, as_json)


def announce_admin(settings: Settings, base_url: str) -> None:
    """Print where the dashboard is; print the admin token once, when it is made."""
    from . import admin

    try:
        token, made = admin.ensure_token(settings)
    except SophonError as exc:
        fail(str(exc))
    if made:
        click.echo(f"admin token (shown once; kept in {admin.token_file(settings)}, mode 0600): {token}", err=True)
        click.echo(f"dashboard: {base_url}/dashboard#token={token}", err=True)
    else:
        source = admin.ENV if settings.env.get(admin.ENV) else "`sophon admin-token` prints it"
        click.echo(f"dashboard: {base_url}/dashboard (admin token: {source})", err=True)


@cli.command()
@click.option("--bind", default=lambda: os.environ.get("SOPHON_BIND", "127.0.0.1:8080"),
              show_default="SOPHON_BIND or 127.0.0.1:8080", help="host:port to listen on")
@click.option("--workers", type=click.IntRange(1, 64), default=lambda: int(os.environ.get("SOPHON_WORKERS", "2")),
              show_default="SOPHON_WORKERS or 2", help="gunicorn worker processes")
@click.option("--threads", type=click.IntRange(1, 256), default=DEFAULT_THREADS, show_default=True,
              help="threads per worker (webhooks waiting for a commit's fsync share it)")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              default=lambda: os.environ.get("SOPHON_LOG_FORMAT", "text"),
              show_default="SOPHON_LOG_FORMAT or text", help="json: one JSON object per log line")
@click.option("--replies", type=click.Choice(["sender", "workers"]),
              default=lambda: (os.environ.get("SOPHON_REPLIES") or "sender").lower(),
              show_default="SOPHON_REPLIES or sender",
              help="sender: a reply-sender process answers messages (at a lower CPU priority than the "
                   "webhooks); workers: runner threads in every gunicorn worker")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="gunicorn's access log on stdout")
def serve(bind: str, workers: int, threads: int, log_format: str, replies: str, access_log: bool) -> None:
    """Validate channels.json, then serve the webhooks, admin API and dashboard with gunicorn
    (and answer the messages from the reply sender next to it)."""
    from .server import run_gunicorn

    os.environ["SOPHON_LOG_FORMAT"] = log_format
    os.environ["SOPHON_REPLIES"] = replies
    settings, _, _, _ = load_or_exit(None)
    announce_admin(settings, f"http://{bind}")
    click.echo(f"sophon: serving on http://{bind} with {workers} worker(s); replies from "
               + ("the reply sender" if replies == "sender" else "runner threads in the workers"), err=True)
    sys.exit(run_gunicorn(bind, workers, threads, replies=replies, access_log=access_log))


@cli.command("admin-token")
def admin_token() -> None:
    """Print the admin token (the dashboard and admin API ask for it); made if there is none."""
    from . import admin

    try:
        token, made = admin.ensure_token(Settings.from_env())
    except (SophonError, ValueError) as exc:
        fail(str(exc))
    click.echo(token)


@cli.group()
def channels() -> None:
    """List, add, test, activate, deactivate and remove channels (edits channels.json safely)."""


@channels.command("validate")
@click.argument("path", required=False)
@JSON_OPTION
def channels_validate(path: str | None, as_json: bool) -> None:
    """Check channels.json (or PATH); same as `sophon validate`."""
    _validate(path, as_json)


def _table(head: tuple[str, ...], rows: list[tuple]) -> None:
    table = [head] + [tuple("" if v is None else str(v) for v in r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@channels.command("list")
@JSON_OPTION
def channels_list(as_json: bool) -> None:
    """List channels with type, number, state, status and routing."""
    from .manage import view

    settings, _, types, cfg = load_or_exit(None, as_json)
    rows = [view(c, types, settings) for c in cfg.channels]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(("ID", "TYPE", "NAME", "ADDRESS", "ENABLED", "AGENT", "STATUS"),
           [(r["id"], r["type"], r["name"], r["address"], "yes" if r["enabled"] else "no",
             r["routing"]["agentId"], r["status"]) for r in rows])


def _convert(raw: str, prop: dict, name: str):
    kind = prop.get("type")
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "yes", "1")
    except ValueError:
        raise click.BadParameter(f"{name}={raw!r} is not a {kind}", param_hint="--set") from None
    return raw


@channels.command("add")
@click.argument("channel_id")
@click.option("--type", "type_name", required=True, help="channel type, e.g. sms (see `sophon channels types`)")
@click.option("--name", default=None, help="display name")
@click.option("--set", "values", multiple=True, metavar="FIELD=VALUE",
              help="a config field, e.g. --set phoneNumber=+15005550006 (repeatable). Secret fields left "
                   "out are asked for without echo (or read from stdin when it is not a terminal)")
@click.option("--agent", default=None, help="routing.agentId (default: default)")
@click.option("--dm-behavior", type=click.Choice(["per-peer", "main-session"]), default="per-peer",
              show_default=True, help="routing.dmBehavior")
@click.option("--activate", is_flag=True, help="activate at once (default: added disabled; test, then activate)")
@JSON_OPTION
def channels_add(channel_id: str, type_name: str, name: str | None, values: tuple[str, ...], agent: str | None,
                 dm_behavior: str, activate: bool, as_json: bool) -> None:
    """Add a channel (validated, secrets encrypted) to channels.json."""
    from .manage import Conflict, view

    mgr, _ = _manager(as_json)
    ct = mgr.types.get(type_name)
    if ct is None:
        fail(f"unknown channel type {type_name!r} (installed: {', '.join(sorted(mgr.types)) or 'none'})", as_json)
    props = ct.config_schema.get("properties", {})
    config: dict = {}
    for item in values:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE", param_hint="--set")
        if field not in props:
            raise click.BadParameter(f"{type_name} has no field {field!r} (fields: {', '.join(props)})",
                                     param_hint="--set")
        config[field] = _convert(raw, props[field], field)
    for field in ct.config_schema.get("required", []):
        if field in ct.secret_fields and field not in config:
            label = props[field].get("title", field)
            if sys.stdin.isatty():
                config[field] = click.prompt(label, hide_input=True, err=True)
            else:  # a script pipes it: one line per secret field, in schema order
                config[field] = sys.stdin.readline().rstrip("\r\n")
                if not config[field]:
                    fail(f"no value for {field} ({label}) on stdin: pipe it in, one line per secret field, "
                         f"or use --set {field}=...", as_json)
    routing = {"dmBehavior": dm_behavior, **({"agentId": agent} if agent else {})}
    body = {"id": channel_id, "type": type_name, "enabled": activate, "config": config, "routing": routing,
            **({"name": name} if name else {})}
    try:
        channel = mgr.create(body)
    except ConfigError as exc:
        _not_changed(exc, as_json)
    except Conflict as exc:
        fail(str(exc), as_json)
    if as_json:
        click.echo(json.dumps(view(channel, mgr.types, mgr.settings), indent=2))
        return
    state = "active" if channel.enabled else "disabled: test it with `sophon channels test " \
        f"{channel.id}`, then `sophon channels activate {channel.id}`"
    click.echo(f"{channel.id}: added ({state})")


def _not_changed(exc: ConfigError, as_json: bool) -> None:
    if as_json:
        fail("not changed: channels.json would be invalid", True, exc.problems)
    click.echo("error: not changed: channels.json would be invalid:", err=True)
    for p in exc.problems:
        click.echo(f"  - {p}", err=True)
    sys.exit(1)


@channels.command("types")
@JSON_OPTION
def channels_types(as_json: bool) -> None:
    """Installed channel types and their config fields."""
    from .manage import type_view

    try:
        types = channel_types(get_plugin_manager())
    except SophonError as exc:
        fail(str(exc), as_json)
    if as_json:
        click.echo(json.dumps([type_view(ct) for _, ct in sorted(types.items())], indent=2))
        return
    for name, ct in sorted(types.items()):
        required = set(ct.config_schema.get("required", []))
        fields = ", ".join(f"{f}{'*' if f in required else ''}{' (secret)' if f in ct.secret_fields else ''}"
                           for f in ct.config_schema.get("properties", {}))
        click.echo(f"{name}  {ct.display_name}  fields: {fields}")


class Spinner:
    """A progress line on stderr while a slow call runs (animated on a terminal only)."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled = label, enabled
        self._stop = None

    def __enter__(self):
        import threading

        if not self.enabled:
            return self
        if not sys.stderr.isatty():
            click.echo(f"{self.label} ...", err=True)
            return self
        self._stop = threading.Event()

        def spin():
            i = 0
            while not self._stop.wait(0.1):
                click.echo(f"\r{self.FRAMES[i % 4]} {self.label} ...", err=True, nl=False)
                i += 1

        self._thread = threading.Thread(target=spin, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            click.echo("\r" + " " * (len(self.label) + 6) + "\r", err=True, nl=False)


@channels.command("test")
@click.argument("channel_id")
@JSON_OPTION
def channels_test(channel_id: str, as_json: bool) -> None:
    """Check a channel's credentials and provider setup; records its status (exit 1 on a problem)."""
    from .manage import NotFound, result_view

    mgr, cfg = _manager(as_json)
    channel = cfg.get(channel_id)
    if channel is None:
        fail(f"no channel {channel_id!r} in {cfg.source} (have: {', '.join(c.id for c in cfg.channels) or 'none'})",
             as_json)
    with Spinner(f"Testing {channel.id} ({channel.type})", enabled=not as_json):
        try:
            _, result = mgr.test(channel_id)
        except NotFound as exc:
            fail(str(exc), as_json)
    if as_json:
        click.echo(json.dumps(result_view(channel_id, result), indent=2))
        sys.exit(0 if result.ok else 1)
    marks = {"ok": "ok", "warning": "warning", "error": "ERROR"}
    for level, message in result.checks:
        click.echo(f"  [{marks.get(level, level)}] {message}")
    click.echo(f"{channel.id}: {result.status}")
    sys.exit(0 if result.ok else 1)


def _change(channel_id: str, as_json: bool, done: str, op) -> None:
    """Run one change through the locked, validated, atomic writer and report it."""
    from .manage import NotFound, view

    mgr, _ = _manager(as_json)
    try:
        channel = op(mgr)
    except NotFound as exc:
        fail(f"{exc} in {mgr.settings.channels_path}", as_json)
    except ConfigError as exc:
        _not_changed(exc, as_json)
    if as_json:
        click.echo(json.dumps(view(channel, mgr.types, mgr.settings) if channel is not None else {"id": channel_id, "removed": True},
                              indent=2))
        return
    click.echo(f"{channel_id}: {done} (running servers pick this up within about a second)")


@channels.command("activate")
@click.argument("channel_id")
@JSON_OPTION
def channels_activate(channel_id: str, as_json: bool) -> None:
    """Set "enabled": true: the channel's webhook answers."""
    _change(channel_id, as_json, "activated", lambda m: m.set_enabled(channel_id, True))


@channels.command("deactivate")
@click.argument("channel_id")
@JSON_OPTION
def channels_deactivate(channel_id: str, as_json: bool) -> None:
    """Set "enabled": false: the channel's webhook answers 404 and nothing is sent."""
    _change(channel_id, as_json, "deactivated", lambda m: m.set_enabled(channel_id, False))


@channels.command("remove")
@click.argument("channel_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@JSON_OPTION
def channels_remove(channel_id: str, yes: bool, as_json: bool) -> None:
    """Delete a channel from channels.json."""
    if not yes and not click.confirm(f"Remove channel {channel_id!r}?", default=False, err=True):
        fail("not removed", as_json)
    _change(channel_id, as_json, "removed", lambda m: m.remove(channel_id))


@channels.command("encrypt")
@JSON_OPTION
def channels_encrypt(as_json: bool) -> None:
    """Encrypt every secret still in plain text in channels.json (hand edits)."""
    from . import channels_file, secrets

    mgr, _ = _manager(as_json)
    count = []
    fields = channels_file.secret_fields(mgr.types)
    try:
        channels_file.edit(mgr.settings.channels_path,
                           lambda data: count.append(secrets.encrypt_plaintext(data, fields, mgr.settings)),
                           pm=mgr.pm, types=mgr.types, agents=list(mgr.agents), settings=mgr.settings)
    except ConfigError as exc:
        _not_changed(exc, as_json)
    except SophonError as exc:
        fail(str(exc), as_json)
    ring = secrets.Keyring.load(mgr.settings)
    source = ring.source if ring else "no key needed"
    if as_json:
        click.echo(json.dumps({"ok": True, "encrypted": count[0], "key": source}, indent=2))
        return
    click.echo(f"{count[0]} secret(s) encrypted in {mgr.settings.channels_path} (key: {source})")


@channels.command("rotate-key")
@click.option("--print-new-key", is_flag=True, help="only print a fresh key (for SOPHON_SECRET_KEY) and exit")
@JSON_OPTION
def channels_rotate_key(print_new_key: bool, as_json: bool) -> None:
    """Re-encrypt every secret under a new key.

    With the key file (SOPHON_DATA_DIR/secret.key) a new key is made and the old
    one dropped. With SOPHON_SECRET_KEY: set it to NEW,OLD first, run this, then
    set it to NEW.
    """
    from . import channels_file, secrets

    if print_new_key:
        click.echo(secrets.new_key())
        return
    mgr, _ = _manager(as_json)
    try:
        count, source = channels_file.rotate_key(mgr.settings.channels_path, pm=mgr.pm, types=mgr.types,
                                                 agents=list(mgr.agents), settings=mgr.settings)
    except ConfigError as exc:
        _not_changed(exc, as_json)
    except SophonError as exc:
        fail(str(exc), as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, "reencrypted": count, "key": source}, indent=2))
        return
    click.echo(f"{count} secret(s) re-encrypted under the new key ({source})")


@cli.command()
@click.option("--channel", "channel_id", required=True, help="the channel to send through")
@click.option("--to", "to", required=True, help="the recipient's address (a phone number in E.164 for SMS)")
@click.argument("text")
@click.option("--retry-for", default=30.0, show_default=True, type=click.FloatRange(0, 3600),
              help="seconds to keep retrying temporary provider failures")
@JSON_OPTION
def send(channel_id: str, to: str, text: str, retry_for: float, as_json: bool) -> None:
    """Send TEXT to a number through a channel now (opt-outs, budget and pacing apply)."""
    from .outbox import NotSent, Outbox
    from .store import Store

    settings, pm, types, cfg = load_or_exit(None, as_json)
    channel = cfg.get(channel_id)
    if channel is None:
        fail(f"no channel {channel_id!r} in {cfg.source} (have: {', '.join(c.id for c in cfg.channels) or 'none'})",
             as_json)
    outbox = Outbox(settings, pm, dict(types), Store(settings.data_dir / "sophon.db", settings.sqlite_synchronous))

    def retrying(error: str, delay: float) -> None:
        if not as_json:
            click.echo(f"  {error}; trying again in {delay:.1f} s", err=True)

    try:
        parts = outbox.send(channel, to, text, retry_for=retry_for, on_retry=retrying)
    except NotSent as exc:
        fail(f"not sent: {exc}", as_json, sent=exc.sent)
    if as_json:
        click.echo(json.dumps({"ok": True, "channel": channel.id, "to": to, "parts": parts}, indent=2))
        return
    for p in parts:
        click.echo(f"sent part {p['part']}/{len(parts)} to {to} via {channel.id}: {p['id']} ({p['status']}, "
                   f"{p['units']} unit(s))")


@cli.command()
@click.option("--write", "target", type=click.Path(dir_okay=False), default=None,
              help="write it to this file instead of printing it")
def schema(target: str | None) -> None:
    """The JSON Schema of channels.json for the installed channel types (for editors)."""
    try:
        types = channel_types(get_plugin_manager())
    except SophonError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    text = json.dumps(config_mod.combined_schema(types), indent=2, ensure_ascii=False) + "\n"
    if target is None:
        click.echo(text, nl=False)
        return
    from .files import write_atomic

    write_atomic(Path(target), text)
    click.echo(f"wrote {target} ({', '.join(sorted(types)) or 'no'} channel types)")


def _store(settings: Settings):
    from .store import Store

    return Store(settings.data_dir / "sophon.db", settings.sqlite_synchronous)


@cli.command()
@click.option("--limit", default=30, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def messages(limit: int, as_json: bool) -> None:
    """Recent messages: direction, peer, status, error, units (SMS segments), files."""
    settings, _, _, _ = load_or_exit(None, as_json)
    rows = _store(settings).recent(limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    import time as _time

    _table(("WHEN (UTC)", "CHANNEL", "DIR", "PEER", "STATUS", "UNITS", "TEXT", "ERROR"),
           [(_time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(r["created_at"])), r["channel_id"], r["direction"],
             r["peer"], r["status"], r["units"], _short(_with_files(r), 40), _short(r["error"] or "", 60))
            for r in reversed(rows)])


@cli.command()
@click.option("--day", default=None, help="one UTC day, YYYY-MM-DD (default: every day recorded)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def usage(day: str | None, as_json: bool) -> None:
    """Messages and units (SMS segments) in and out per channel and day, and what the guards stopped."""
    settings, _, _, _ = load_or_exit(None, as_json)
    data = _store(settings).usage(day)
    names = ("messages_in", "units_in", "messages_out", "units_out", "failed", "blocked", "rate_limited",
             "skipped_opted_out", "skipped_budget")
    if as_json:
        click.echo(json.dumps([{"channel": c, "day": d, **{n: v.get(n, 0) for n in names}}
                               for (c, d), v in data.items()], indent=2))
        return
    _table(("DAY", "CHANNEL", "IN", "UNITS IN", "OUT", "UNITS OUT", "FAILED", "BLOCKED", "RATE-LIMITED",
            "OPTED-OUT", "OVER BUDGET"),
           [(d, c, *(v.get(n, 0) for n in names)) for (c, d), v in data.items()])


def _with_files(row: dict) -> str:
    """A message's text followed by its files, e.g. ``look [image/png]``."""
    files = " ".join(f"[{f['content_type']}{' not received' if f.get('dropped') else ''}]" for f in row["files"])
    return " ".join(p for p in (row["text"], files) if p)


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def main(argv: list[str] | None = None) -> None:
    try:
        pm = get_plugin_manager()
    except PluginError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    pm.hook.sophon_commands(cli=cli)
    cli.main(args=argv, prog_name="sophon")
