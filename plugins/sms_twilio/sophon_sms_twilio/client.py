"""Twilio REST clients, pointed at ``SOPHON_TWILIO_API_URL`` when it is set."""
from __future__ import annotations

import hashlib
import threading
from typing import Mapping

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

TWILIO_API = "https://api.twilio.com"
TIMEOUT = 15.0  # seconds per REST call

_clients: dict[tuple[str, str, str], Client] = {}
_guard = threading.Lock()


class _BaseUrlHttpClient(TwilioHttpClient):
    """Sends what the SDK addresses to api.twilio.com to ``base_url`` instead."""

    def __init__(self, base_url: str):
        super().__init__(timeout=TIMEOUT)
        self.base_url = base_url.rstrip("/")

    def request(self, method, url, *args, **kwargs):
        if url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API):]
        return super().request(method, url, *args, **kwargs)


def api_base(env: Mapping[str, str]) -> str:
    return (env.get("SOPHON_TWILIO_API_URL") or TWILIO_API).rstrip("/")


def client_for(config: Mapping[str, str], env: Mapping[str, str]) -> Client:
    """A cached SDK client for the channel's credentials (one connection pool each)."""
    base = api_base(env)
    token_id = hashlib.sha256(config["authToken"].encode()).hexdigest()
    key = (config["accountSid"], token_id, base)
    with _guard:
        client = _clients.get(key)
        if client is None:
            http = _BaseUrlHttpClient(base) if base != TWILIO_API else TwilioHttpClient(timeout=TIMEOUT)
            client = Client(config["accountSid"], config["authToken"], http_client=http)
            if base != TWILIO_API:  # TWILIO_EDGE / TWILIO_REGION would move the host off the override
                client.edge = client.region = None
            _clients[key] = client
        return client
