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
from .settings import Settings


@click.group()
def cli() -> None:
    """Sophon channels: put your bot on SMS (and more) through plugins."""


def load_or_exit(path: str | None):
    """(settings, pm, types, config); exits 1 with every problem listed when invalid."""
    try:
        settings = Settings.from_env()
        if path:
            settings = replace(settings, channels_path=Path(path))
        pm = get_plugin_manager(env=settings.env)
        types = channel_types(pm)
        cfg = config_mod.load_file(settings.channels_path, types, pm, settings, agents=agents(pm))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        for w in exc.warnings:
            click.echo(f"warning: {w}", err=True)
        sys.exit(1)
    except (SophonError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for w in cfg.warnings:
        click.echo(f"warning: {w}", err=True)
    return settings, pm, types, cfg


@cli.command()
@click.argument("path", required=False)
def validate(path: str | None) -> None:
    """Check channels.json (or PATH) without starting anything. Exit 1 when invalid."""
    _, _, _, cfg = load_or_exit(path)
    listed = ", ".join(f"{c.id} ({c.type}, {'enabled' if c.enabled else 'disabled'})" for c in cfg.channels)
    click.echo(f"{cfg.source} is valid: {len(cfg.channels)} channel(s){': ' + listed if listed else ''}")


@cli.command()
@click.option("--bind", default=lambda: os.environ.get("SOPHON_BIND", "127.0.0.1:8080"),
              show_default="SOPHON_BIND or 127.0.0.1:8080", help="host:port to listen on")
@click.option("--workers", type=click.IntRange(1, 64), default=lambda: int(os.environ.get("SOPHON_WORKERS", "2")),
              show_default="SOPHON_WORKERS or 2", help="gunicorn worker processes")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True,
              help="threads per worker")
def serve(bind: str, workers: int, threads: int) -> None:
    """Validate channels.json, then serve the webhooks with gunicorn."""
    from .server import run_gunicorn

    load_or_exit(None)
    click.echo(f"sophon: serving on http://{bind} with {workers} worker(s)", err=True)
    sys.exit(run_gunicorn(bind, workers, threads))


@cli.group()
def channels() -> None:
    """Inspect configured channels."""


@channels.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def channels_list(as_json: bool) -> None:
    """List channels with type, number, state and routing."""
    _, _, types, cfg = load_or_exit(None)
    rows = [{"id": c.id, "type": c.type, "name": c.name, "address": c.address,
             "enabled": c.enabled, "agentId": c.routing.agent_id,
             "dmBehavior": c.routing.dm_behavior, "status": c.status} for c in cfg.channels]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    head = ("ID", "TYPE", "NAME", "ADDRESS", "ENABLED", "AGENT", "STATUS")
    table = [head] + [(r["id"], r["type"], r["name"], r["address"] or "", "yes" if r["enabled"] else "no",
                       r["agentId"], r["status"] or "") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


@channels.command("test")
@click.argument("channel_id")
def channels_test(channel_id: str) -> None:
    """Check a channel's credentials and provider setup (exit 1 on a problem)."""
    settings, pm, _, cfg = load_or_exit(None)
    channel = cfg.get(channel_id)
    if channel is None:
        click.echo(f"error: no channel {channel_id!r} in {cfg.source} "
                   f"(have: {', '.join(c.id for c in cfg.channels) or 'none'})", err=True)
        sys.exit(1)
    click.echo(f"Testing {channel.id} ({channel.type}) ...", err=True)
    result = pm.hook.test_connection(channel=channel, settings=settings)
    if result is None:
        click.echo(f"error: no plugin implements test_connection for type {channel.type!r}", err=True)
        sys.exit(1)
    marks = {"ok": "ok", "warning": "warning", "error": "ERROR"}
    for level, message in result.checks:
        click.echo(f"  [{marks.get(level, level)}] {message}")
    click.echo(f"{channel.id}: {result.status}")
    sys.exit(0 if result.ok else 1)


def _edit(channel_id: str, change, done: str) -> None:
    """Change one channel through the locked, validated, atomic writer."""
    from . import channels_file

    settings, pm, types, _ = load_or_exit(None)

    def apply(data):
        change(channels_file.find(data, channel_id), data)

    try:
        channels_file.edit(settings.channels_path, apply, pm=pm, types=types, agents=agents(pm),
                           settings=settings)
    except KeyError as exc:
        click.echo(f"error: {exc.args[0]} in {settings.channels_path}", err=True)
        sys.exit(1)
    except ConfigError as exc:
        click.echo(f"error: not changed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{channel_id}: {done} (running servers pick this up within about a second)")


@channels.command("activate")
@click.argument("channel_id")
def channels_activate(channel_id: str) -> None:
    """Set "enabled": true: the channel's webhook answers."""
    _edit(channel_id, lambda ch, data: ch.__setitem__("enabled", True), "activated")


@channels.command("deactivate")
@click.argument("channel_id")
def channels_deactivate(channel_id: str) -> None:
    """Set "enabled": false: the channel's webhook answers 404 and nothing is sent."""
    _edit(channel_id, lambda ch, data: ch.__setitem__("enabled", False), "deactivated")


@channels.command("remove")
@click.argument("channel_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def channels_remove(channel_id: str, yes: bool) -> None:
    """Delete a channel from channels.json."""
    if not yes and not click.confirm(f"Remove channel {channel_id!r}?", default=False):
        click.echo("not removed")
        sys.exit(1)
    _edit(channel_id, lambda ch, data: data["channels"].remove(ch), "removed")


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
    from .channels_file import write_atomic

    write_atomic(Path(target), text)
    click.echo(f"wrote {target} ({', '.join(sorted(types)) or 'no'} channel types)")


def _store(settings: Settings):
    from .store import Store

    return Store(settings.data_dir / "sophon.db", settings.sqlite_synchronous)


def _table(head: tuple[str, ...], rows: list[tuple]) -> None:
    table = [head] + [tuple("" if v is None else str(v) for v in r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@cli.command()
@click.option("--limit", default=30, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def messages(limit: int, as_json: bool) -> None:
    """Recent messages: direction, peer, status, error, units (SMS segments)."""
    settings, _, _, _ = load_or_exit(None)
    rows = _store(settings).recent(limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    import time as _time

    _table(("WHEN (UTC)", "CHANNEL", "DIR", "PEER", "STATUS", "UNITS", "TEXT", "ERROR"),
           [(_time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(r["created_at"])), r["channel_id"], r["direction"],
             r["peer"], r["status"], r["units"], _short(r["text"], 40), _short(r["error"] or "", 60))
            for r in reversed(rows)])


@cli.command()
@click.option("--day", default=None, help="one UTC day, YYYY-MM-DD (default: every day recorded)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def usage(day: str | None, as_json: bool) -> None:
    """Messages and units (SMS segments) in and out per channel and day, and what the guards stopped."""
    settings, _, _, _ = load_or_exit(None)
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
