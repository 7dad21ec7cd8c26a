"""Twilio REST clients, pointed at ``SOPHON_TWILIO_API_URL`` when it is set."""
from __future__ import annotations

import hashlib
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Mapping
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

TWILIO_API = "https://api.twilio.com"
TIMEOUT = 15.0  # seconds per REST call
# Keep-alive connections kept per host. A client is shared by every thread that sends for
# its channel (the reply sender runs SOPHON_PIPELINE_THREADS per worker: 16 for 2 workers);
# the SDK keeps cpu_count + 4 for https (6 on 2 CPUs), requests its default 10 for http, so the
# extra threads' connections were closed after each reply (a new TCP and TLS handshake for
# the next one, and a "Connection pool is full" warning). A pool never holds more connections
# than were open at once, so a large bound costs nothing when fewer threads send.
POOL_SIZE = 128

_clients: dict[tuple[str, str, str], Client] = {}
_guard = threading.Lock()


class _HttpClient(TwilioHttpClient):
    """The SDK's HTTP client, pointed at ``base_url``, remembering each thread's last
    response headers (the SDK's exceptions do not carry them; we need Retry-After)."""

    def __init__(self, base_url: str):
        super().__init__(timeout=TIMEOUT)
        self.base_url = base_url.rstrip("/")
        self._local = threading.local()
        if self.session is not None:
            for scheme in ("https://", "http://"):  # (http: a local sandbox)
                self.session.mount(scheme, HTTPAdapter(pool_maxsize=POOL_SIZE))
            self.session.merge_environment_settings = _EnvSettings(self.session.merge_environment_settings)

    def request(self, method, url, *args, **kwargs):
        if url.startswith(TWILIO_API) and self.base_url != TWILIO_API:
            url = self.base_url + url[len(TWILIO_API):]
        self._local.headers = None
        response = super().request(method, url, *args, **kwargs)
        self._local.headers = response.headers  # requests' case-insensitive mapping
        return response

    def last_header(self, name: str) -> str | None:
        headers = getattr(self._local, "headers", None)
        return headers.get(name) if headers is not None else None


class _EnvSettings:
    """``Session.merge_environment_settings`` worked out once per scheme and host.

    requests reads the proxy variables (``HTTPS_PROXY``, ``NO_PROXY``, ...) and the CA
    bundle variables from the environment on every call, which took about a tenth of a
    reply's CPU time; they depend only on the environment, which a worker does not
    change, and on the URL's scheme and host (``NO_PROXY``). Calls with explicit
    settings are passed through.
    """

    def __init__(self, merge):
        self.merge = merge
        self.seen: dict[tuple[str, str], dict] = {}

    def __call__(self, url, proxies, stream, verify, cert):
        if proxies or stream is not None or verify is not None or cert is not None:
            return self.merge(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self.seen.get(key)
        if found is None:
            found = self.seen[key] = self.merge(url, proxies, stream, verify, cert)
        return {**found, "proxies": dict(found.get("proxies") or {})}


def retry_after(client: Client) -> float | None:
    """Seconds from the Retry-After header (seconds or an HTTP date) of this thread's last response."""
    http = client.http_client
    raw = http.last_header("Retry-After") if isinstance(http, _HttpClient) else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


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
            client = Client(config["accountSid"], config["authToken"], http_client=_HttpClient(base))
            if base != TWILIO_API:  # TWILIO_EDGE / TWILIO_REGION would move the host off the override
                client.edge = client.region = None
            _clients[key] = client
        return client
