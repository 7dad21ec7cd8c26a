"""Constants and builders shared by the WhatsApp plugin's tests."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

SENDER = "+15005550020"  # the channel's WhatsApp sender
PEER = "+15551230001"  # the person on WhatsApp
WA_SENDER, WA_PEER = f"whatsapp:{SENDER}", f"whatsapp:{PEER}"
PUBLIC = "https://bot.example.com"
WEBHOOK = "/api/channels/whatsapp/webhook"
STATUS = "/api/channels/whatsapp/status"
PLUGINS = "whatsapp_twilio,default_agent"


def wa_channel(account, cid="wa", number=SENDER, **extra):
    return {"id": cid, "type": "whatsapp", "name": "Sophon WhatsApp", "enabled": True,
            "config": {"accountSid": account.sid, "authToken": account.auth_token, "phoneNumber": number},
            "routing": {"agentId": "default", "dmBehavior": "per-peer"}, **extra}


def wa_form(account_sid, body="hello", sender=WA_PEER, to=WA_SENDER, sid=None, media=(), **extra):
    """Twilio's inbound WhatsApp form; ``media``: (url, content type) pairs."""
    sid = sid or f"SM{time.time_ns():032x}"[:34]
    form = {"SmsMessageSid": sid, "NumMedia": str(len(media)), "ProfileName": "Ada Lovelace",
            "SmsSid": sid, "WaId": sender.split("+")[-1], "SmsStatus": "received", "Body": body, "To": to,
            "NumSegments": "1", "MessageSid": sid, "AccountSid": account_sid, "From": sender,
            "ApiVersion": "2010-04-01"}
    for i, (url, ctype) in enumerate(media):
        form[f"MediaUrl{i}"], form[f"MediaContentType{i}"] = url, ctype
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def post_signed(client, token, form, *, url=PUBLIC + WEBHOOK, signature=None, path=WEBHOOK, headers=None):
    """POST a form to the Falcon test client, signed as Twilio signs it for ``url``."""
    sig = RequestValidator(token).compute_signature(url, form) if signature is None else signature
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig, **(headers or {})}
    if signature == "":
        del hdrs["X-Twilio-Signature"]
    return client.simulate_post(path, body=urlencode(form), headers=hdrs)


class ForeignHost:
    """Another host (another loopback origin) that serves a picture and records every
    request it gets: what Sophon must never fetch from."""

    BODY = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200

    def __init__(self):
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(outer.BODY)))
                self.end_headers()
                self.wfile.write(outer.BODY)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
