"""The Twilio SDK client the plugin sends with (``client_for``)."""
from __future__ import annotations

import requests.sessions

from sms_helpers import NUMBER, PEER
from sophon_sms_twilio.client import client_for


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
