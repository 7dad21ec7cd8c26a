"""The Twilio SDK client the plugin sends with (``client_for``)."""
from __future__ import annotations

import concurrent.futures
import http.server
import logging
import threading

import requests.sessions

from sms_helpers import NUMBER, PEER
from sophon_sms_twilio.client import _HttpClient, client_for


def test_the_environment_is_read_once_per_host_not_on_every_send(sandbox, account, monkeypatch):
    """requests reads the proxy and CA bundle variables on every call unless told otherwise;
    the client works them out once per scheme and host (the environment of a worker does not
    change) and still honours them."""
    calls = []
    real = requests.sessions.get_environ_proxies

    def counted(url, no_proxy=None):
        calls.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counted)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail every call if it were not bypassed
    client = client_for({"accountSid": account.sid, "authToken": account.auth_token},
                        {"SOPHON_TWILIO_API_URL": sandbox.url})
    sids = [client.messages.create(to=PEER, from_=NUMBER, body=f"hello {n}").sid for n in range(3)]
    assert len(set(sids)) == 3
    assert len(calls) == 1, calls


def test_every_sending_thread_keeps_its_connection_between_replies(caplog):
    """One client serves every thread that sends for a channel (the reply sender runs 8 per
    worker). Each keeps its keep-alive connection for the next reply: no thread's connection
    is closed because the pool is full, so none opens a new one (a TLS handshake with Twilio)."""
    threads, rounds = 20, 3
    arrived = threading.Barrier(threads, timeout=10)  # every request of a round in flight at once
    connections = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self):
            connections.append(self.client_address)
            super().setup()

        def do_GET(self):
            arrived.wait()
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = _HttpClient(url)
    try:
        with caplog.at_level(logging.WARNING, logger="urllib3"):
            for _ in range(rounds):
                with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                    statuses = list(pool.map(lambda n: client.request("GET", f"{url}/reply/{n}").status_code,
                                             range(threads)))
                assert statuses == [200] * threads
    finally:
        client.session.close()
        server.shutdown()
        server.server_close()
    assert len(connections) == threads, f"{len(connections)} connections for {threads} threads"
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
