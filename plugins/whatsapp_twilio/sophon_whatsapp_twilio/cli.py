"""``sophon whatsapp simulate``: message the sandbox's WhatsApp sender as a person would."""
from __future__ import annotations

import base64
import mimetypes
import os
import sys
import time
from pathlib import Path

import click
import requests

DEFAULT_SANDBOX = "http://127.0.0.1:8089"


@click.group()
def whatsapp() -> None:
    """WhatsApp (Twilio) channel: simulated messages through the local sandbox."""


@whatsapp.command()
@click.argument("text", default="")
@click.option("--file", "paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="attach a file (repeatable), e.g. --file photo.jpg")
@click.option("--from", "from_", default=None, help="the sender, +E164 (default: the sandbox's demo phone)")
@click.option("--to", default=None, help="the WhatsApp sender messaged (default: the sandbox's demo sender)")
@click.option("--profile-name", default="Sandbox User", show_default=True, help="the sender's WhatsApp name")
@click.option("--sandbox-url", default=lambda: os.environ.get("SOPHON_TWILIO_API_URL", DEFAULT_SANDBOX),
              show_default="SOPHON_TWILIO_API_URL or " + DEFAULT_SANDBOX)
@click.option("--timeout", default=15.0, show_default=True, help="seconds to wait for the reply")
def simulate(text: str, paths: tuple[str, ...], from_: str | None, to: str | None, profile_name: str,
             sandbox_url: str, timeout: float) -> None:
    """Send TEXT (and files) on WhatsApp to the sandbox sender, and print Sophon's reply."""
    from sophon_sms_twilio.sandbox import DEMO_PEER, DEMO_WHATSAPP_NUMBER

    def wa(number: str) -> str:
        return number if number.startswith("whatsapp:") else f"whatsapp:{number}"

    from_, to = wa(from_ or DEMO_PEER), wa(to or DEMO_WHATSAPP_NUMBER)
    if not text and not paths:
        raise click.UsageError("give a TEXT, a --file, or both")
    files = [{"content_base64": base64.b64encode(Path(p).read_bytes()).decode(),
              "content_type": mimetypes.guess_type(p)[0] or "application/octet-stream"} for p in paths]
    base = sandbox_url.rstrip("/")
    try:
        before = requests.get(f"{base}/_sandbox/messages", params={"to": from_}, timeout=5).json()["messages"]
        after = max((m["index"] for m in before), default=-1)
        sent = requests.post(f"{base}/_sandbox/inbound", json={"from": from_, "to": to, "body": text,
                                                               "profile_name": profile_name, "media_files": files},
                             timeout=15).json()
    except requests.RequestException as exc:
        click.echo(f"error: no Twilio sandbox at {base} ({type(exc).__name__}). "
                   "Start one with ./dev serve (or sophon sms demo).", err=True)
        sys.exit(1)
    click.echo(f"{from_} -> {to}: {text}" + "".join(f" [{f['content_type']}]" for f in files))
    if sent.get("status") != 200:
        click.echo(f"error: Sophon answered the webhook with HTTP {sent.get('status')}: "
                   f"{(sent.get('body') or sent.get('error') or '').strip()}", err=True)
        sys.exit(1)
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        got = requests.get(f"{base}/_sandbox/messages", params={"to": from_, "after": after},
                           timeout=5).json()["messages"]
        for m in got:
            media = [f"[{f.get('content_type')}, {f.get('size')} bytes]" for f in m.get("media_fetched") or ()]
            body = m["form"].get("Body") or ""
            click.echo(f"{m['form'].get('From')} -> {from_}: {body}" + (" " if body and media else "") + " ".join(media))
            after = max(after, m["index"])
            quiet_until = time.monotonic() + 1.5
        time.sleep(0.2)
    if quiet_until is None:
        click.echo(f"error: no reply within {timeout:.0f} s (see `sophon messages` and the server's log)", err=True)
        sys.exit(1)
