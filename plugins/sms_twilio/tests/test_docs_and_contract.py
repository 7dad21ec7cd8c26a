"""The README's config table and the requests we send agree with their sources of truth."""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import falcon.testing

from sophon_core.app import create_app
from sophon_sms_twilio.plugin import CONFIG_SCHEMA

from sms_helpers import PEER, inbound_form, post_signed, sms_channel

REPO = Path(__file__).resolve().parents[3]
OAI = json.loads((Path(__file__).parent / "contract" / "twilio_api_v2010.json").read_text())


def test_readme_config_table_matches_the_schema():
    text = (REPO / "README.md").read_text()
    section = text.split("### SMS (Twilio) channel config", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (Yes|No) \| (.+?) \|$", section, re.M)
    required = set(CONFIG_SCHEMA["required"])
    expected = [(name, "secret" if p.get("writeOnly") else "text", "Yes" if name in required else "No",
                 p["description"]) for name, p in CONFIG_SCHEMA["properties"].items()]
    assert rows == expected


def _operation(path: str, method: str) -> dict:
    return OAI["paths"][path][method]


def _body_properties(op: dict) -> set[str]:
    schema = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    return set(schema["properties"])


def test_every_request_the_plugin_sends_is_in_twilios_contract(sms_runtime, account, sandbox):
    """Inbound + test_connection through the app; then check each REST request against the OAI."""
    rt = sms_runtime([sms_channel(account)])
    client = falcon.testing.TestClient(create_app(rt))
    post_signed(client, account.auth_token, inbound_form(account.sid))
    sandbox.wait_for_messages(1, to=PEER)
    assert rt.pm.hook.test_connection(channel=rt.config.get("sms-twilio"), settings=rt.settings).ok
    reqs = sandbox.requests()
    assert {(r["method"], r["status"]) for r in reqs} == {("POST", 201), ("GET", 200)}
    templates = {
        ("POST", f"/2010-04-01/Accounts/{account.sid}/Messages.json"): "/2010-04-01/Accounts/{AccountSid}/Messages.json",
        ("GET", f"/2010-04-01/Accounts/{account.sid}.json"): "/2010-04-01/Accounts/{Sid}.json",
        ("GET", f"/2010-04-01/Accounts/{account.sid}/IncomingPhoneNumbers.json"): "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json",
    }
    for r in reqs:
        template = templates[(r["method"], urlparse(r["path"]).path)]
        op = _operation(template, r["method"].lower())
        if r["method"] == "POST":
            assert set(r["form"]) <= _body_properties(op), set(r["form"]) - _body_properties(op)
            assert {"To", "From", "Body"} <= set(r["form"])
        query = r.get("query") or {}
        if isinstance(query, str):
            query = parse_qs(query)
        names = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
        assert set(query) <= names, set(query) - names
