"""``sophon sms ...``: the local demo, the sandbox, and a simulated phone."""
from __future__ import annotations

import os
import sys
import time

import click
import requests

DEFAULT_SANDBOX = "http://127.0.0.1:8089"


@click.group()
def sms() -> None:
    """SMS (Twilio) channel: local sandbox and simulated texts."""


@sms.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="where Sophon listens")
@click.option("--sandbox-port", default=8089, show_default=True, type=int, help="where the Twilio sandbox listens")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
def demo(bind: str, sandbox_port: int, workers: int) -> None:
    """Run Sophon on its embedded defaults against the local Twilio sandbox.

    Uses ./channels.json (sandbox credentials), SQLite state in SOPHON_DATA_DIR
    (default ./.sophon) and the built-in default agent. Text it with
    `sophon sms simulate "hello"` from another terminal.
    """
    from sophon_core.server import run_gunicorn

    from .sandbox import DEMO_NUMBER, DEMO_SPARE_NUMBER, DEMO_WHATSAPP_NUMBER, demo_sandbox

    public = f"http://{bind}"
    # The demo account also has a WhatsApp sender; its messages go to the WhatsApp channel's
    # webhook (answered when the sophon-whatsapp-twilio plugin is installed).
    with demo_sandbox(port=sandbox_port, sms_url=f"{public}/api/channels/sms/webhook",
                      whatsapp_url=f"{public}/api/channels/whatsapp/webhook") as box:
        env = dict(os.environ, SOPHON_TWILIO_API_URL=box.url, SOPHON_PUBLIC_URL=public)
        click.echo(f"sandbox: Twilio REST API and phone at {box.url}; number {DEMO_NUMBER}", err=True)
        click.echo(f"sophon:  webhook {public}/api/channels/sms/webhook", err=True)
        click.echo('try:     sophon sms simulate "hello"   (or ./dev sophon sms simulate "hello")', err=True)
        click.echo(f"spare:   {DEMO_SPARE_NUMBER} on the same sandbox account, for trying Add Channel in "
                   "the dashboard", err=True)
        click.echo(f"whatsapp: sender {DEMO_WHATSAPP_NUMBER}; try: sophon whatsapp simulate \"hi\" --file photo.jpg",
                   err=True)
        os.environ.update(env)
        from sophon_core.cli import announce_admin, load_or_exit
        settings, _, _, _ = load_or_exit(None)  # refuse to start on an invalid channels.json
        announce_admin(settings, public)
        sys.exit(run_gunicorn(bind, workers, 4, env))


@sms.command()
@click.option("--port", default=8089, show_default=True, type=int)
@click.option("--sms-url", default="http://127.0.0.1:8080/api/channels/sms/webhook", show_default=True,
              help="the sandbox number's 'A message comes in' webhook")
def sandbox(port: int, sms_url: str) -> None:
    """Run only the local Twilio sandbox (REST API + simulated phone)."""
    from .sandbox import main
    sys.exit(main(["--port", str(port), "--sms-url", sms_url]))


@sms.command()
@click.argument("text")
@click.option("--from", "from_", default=None, help="the simulated sender (default: the sandbox's demo phone)")
@click.option("--to", default=None, help="the Twilio number texted (default: the sandbox's demo number)")
@click.option("--sandbox-url", default=lambda: os.environ.get("SOPHON_TWILIO_API_URL", DEFAULT_SANDBOX),
              show_default="SOPHON_TWILIO_API_URL or " + DEFAULT_SANDBOX)
@click.option("--timeout", default=15.0, show_default=True, help="seconds to wait for the reply")
def simulate(text: str, from_: str | None, to: str | None, sandbox_url: str, timeout: float) -> None:
    """Text the sandbox number as a phone would, and print Sophon's reply."""
    from .sandbox import DEMO_NUMBER, DEMO_PEER

    from_, to = from_ or DEMO_PEER, to or DEMO_NUMBER
    base = sandbox_url.rstrip("/")
    try:
        before = requests.get(f"{base}/_sandbox/messages", params={"to": from_}, timeout=5).json()["messages"]
        after = max((m["index"] for m in before), default=-1)
        sent = requests.post(f"{base}/_sandbox/inbound", json={"from": from_, "to": to, "body": text},
                             timeout=15).json()
    except requests.RequestException as exc:
        click.echo(f"error: no Twilio sandbox at {base} ({type(exc).__name__}). "
                   "Start one with ./dev serve (or sophon sms demo).", err=True)
        sys.exit(1)
    click.echo(f"{from_} -> {to}: {text}")
    if sent.get("status") != 200:
        click.echo(f"error: Sophon answered the webhook with HTTP {sent.get('status')}: "
                   f"{(sent.get('body') or '').strip()}", err=True)
        sys.exit(1)
    from .webhook import intent_of

    intent = intent_of(text)
    if intent != "message":
        what = {"opt_out": "opted out: Sophon sends this number nothing until it texts START",
                "opt_in": "opted back in", "help": "HELP is answered by Twilio, not the agent"}[intent]
        click.echo(f"(no reply expected: {what})")
        return
    deadline = time.monotonic() + timeout
    quiet_until = None  # a long reply comes in several messages: print until 1.5 s of quiet
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        got = requests.get(f"{base}/_sandbox/messages", params={"to": from_, "after": after},
                           timeout=5).json()["messages"]
        for m in got:
            click.echo(f"{m['form'].get('From')} -> {from_}: {m['form'].get('Body')}")
            after = max(after, m["index"])
            quiet_until = time.monotonic() + 1.5
        time.sleep(0.2)
    if quiet_until is None:
        click.echo(f"error: no reply within {timeout:.0f} s (has {from_} opted out with STOP? "
                   "see `sophon messages` and the server's log)", err=True)
        sys.exit(1)
