"""A throwaway third-party channel type, "dummy", used by the core's tests.

Inbound: ``POST /api/channels/dummy/webhook`` with JSON
``{"token": ..., "to": ..., "from": ..., "id": ..., "text": ...}``.
Outbound: appended to ``SENT`` (a list shared by the test process).
"""
from __future__ import annotations

import json
import threading
import time

from sophon_core.errors import Problem, SendError, WebhookRejected
from sophon_core.hookspecs import hookimpl
from sophon_core.models import ChannelType, ConnectionResult, InboundMessage, SentPart, WebhookReply

SENT: list[tuple[str, str, str]] = []
SENT_LOCK = threading.Lock()
SENT_EVENT = threading.Condition(SENT_LOCK)

SCHEMA = {
    "type": "object",
    "examples": [{"address": "dummy:bob", "token": "s3cret-token"}],
    "required": ["address", "token"],
    "additionalProperties": False,
    "properties": {
        "address": {"title": "Address", "type": "string", "pattern": "^dummy:[a-z]+$",
                    "description": "dummy address",
                    "x-errorMessage": "is not a dummy address (example: dummy:bob)"},
        "token": {"title": "Shared token", "type": "string", "minLength": 8, "writeOnly": True,
                  "description": "shared secret"},
        "failWith": {"type": "string", "enum": ["none", "permanent", "transient"],
                     "description": "make send fail (tests)"},
        # optional, for the dashboard's generated form: a number and a checkbox
        "retries": {"title": "Retries", "type": "integer", "minimum": 0, "maximum": 9,
                    "description": "how often to retry (unused)"},
        "loud": {"title": "Loud", "type": "boolean", "description": "shout (unused)"},
    },
}


class DummyChannel:
    @hookimpl
    def sophon_channel_types(self):
        return [ChannelType("dummy", "Dummy", SCHEMA, address_field="address")]

    @hookimpl
    def validate_config(self, channel_type, channel_id, config):
        if channel_type != "dummy":
            return None
        if config["address"] == "dummy:reserved":
            return [Problem(channel_id, "config.address", "dummy:reserved is reserved; pick another")]
        return []

    @hookimpl
    def test_connection(self, channel):
        if channel.type != "dummy":
            return None
        return ConnectionResult(True, (("ok", f"dummy {channel.address} reachable"),))

    @hookimpl
    def handle_inbound(self, channel_type, request, channels):
        if channel_type != "dummy":
            return None
        data = json.loads(request.context.body or b"{}")
        channel = next((c for c in channels if c.address == data.get("to")), None)
        if channel is None or not channel.enabled:
            raise WebhookRejected(404, f"no active dummy channel for {data.get('to')}")
        if data.get("token") != channel.config["token"]:
            raise WebhookRejected(403, "bad token")
        msg = InboundMessage(channel.id, data["id"], data["from"], data["to"], data.get("text", ""))
        return WebhookReply(body="ok", messages=(msg,))

    @hookimpl
    def send(self, channel, message):
        if channel.type != "dummy":
            return None
        mode = channel.config.get("failWith", "none")
        if mode != "none":
            raise SendError(f"dummy refuses ({mode})", code=1, permanent=mode == "permanent")
        with SENT_EVENT:
            SENT.append((channel.id, message.recipient, message.text))
            SENT_EVENT.notify_all()
            return SentPart(f"D{len(SENT)}", message.text, "sent")


plugin = DummyChannel()


def wait_sent(n, timeout=10.0):
    deadline = time.monotonic() + timeout
    with SENT_EVENT:
        while len(SENT) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {n} sent message(s), got {len(SENT)}: {SENT}")
            SENT_EVENT.wait(left)
        return list(SENT)


def dummy_channel(cid="d1", address="dummy:bob", token="s3cret-token", **extra):
    return {"id": cid, "type": "dummy", "name": cid, "enabled": True,
            "config": {"address": address, "token": token}, **extra}
