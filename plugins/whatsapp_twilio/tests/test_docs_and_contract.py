"""The README's config table, the requests we send to Twilio and the connection test
agree with their sources of truth (the schema, Twilio's OpenAPI description)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import falcon.testing

from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl
from sophon_core.models import Attachment, Reply
from sophon_whatsapp_twilio.plugin import CONFIG_SCHEMA

from wa_helpers import WA_PEER, post_signed, wa_channel, wa_form

REPO = Path(__file__).resolve().parents[3]
OAI = json.loads((REPO / "plugins" / "sms_twilio" / "tests" / "contract" / "twilio_api_v2010.json").read_text())


def test_readme_config_table_matches_the_schema():
    text = (REPO / "README.md").read_text()
    section = text.split('### WhatsApp (Twilio) channel config', 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (Yes|No) \| (.+?) \|$", section, re.M)
    required = set(CONFIG_SCHEMA["required"])
    expected = [(name, "secret" if p.get("writeOnly") else "text", "Yes" if name in required else "No",
                 p["description"]) for name, p in CONFIG_SCHEMA["properties"].items()]
    assert rows == expected


def test_repo_channels_json_has_the_sandbox_whatsapp_demo():
    from sophon_sms_twilio.sandbox import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, DEMO_WHATSAPP_NUMBER

    (ch,) = [c for c in json.loads((REPO / "channels.json").read_text())["channels"] if c["type"] == "whatsapp"]
    assert ch["config"] == {"accountSid": DEMO_ACCOUNT_SID, "authToken": DEMO_AUTH_TOKEN,
                            "phoneNumber": DEMO_WHATSAPP_NUMBER}
    assert ch["enabled"] is True


class FileAgent:
    @hookimpl
    def sophon_agents(self):
        class Agent:
            id = "file"

            def reply(self, message, history):
                return Reply("a picture", attachments=(Attachment("image/png", data=b"\x89PNG-bytes"),))

        return [Agent()]


def test_every_request_the_plugin_sends_is_in_twilios_contract(wa_runtime, account, sandbox):
    rt = wa_runtime([wa_channel(account, routing={"agentId": "file"})], extra=[FileAgent()])
    client = falcon.testing.TestClient(create_app(rt))
    post_signed(client, account.auth_token, wa_form(account.sid))
    sandbox.wait_for_messages(1, to=WA_PEER)
    assert rt.pm.hook.test_connection(channel=rt.config.get("wa"), settings=rt.settings).ok
    posts = [r for r in sandbox.requests() if r["method"] == "POST"]
    (create,) = posts
    op = OAI["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["post"]
    allowed = set(op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]["properties"])
    assert set(create["form_multi"]) <= allowed, set(create["form_multi"]) - allowed
    assert {"To", "From", "Body", "MediaUrl", "StatusCallback"} <= set(create["form_multi"])
    assert len(create["form_multi"]["MediaUrl"]) == 1  # WhatsApp: one file per message
    (out,) = [r for r in rt.store.recent() if r["direction"] == "out"]
    assert out["files"] == [{"content_type": "image/png", "size": len(b"\x89PNG-bytes"), "filename": None}]
    gets = {r["path"] for r in sandbox.requests() if r["method"] == "GET"}
    assert gets <= {f"/2010-04-01/Accounts/{account.sid}.json",
                    f"/2010-04-01/Accounts/{account.sid}/IncomingPhoneNumbers.json"}, gets


def test_connection_check_words(wa_runtime, account, sandbox):
    rt = wa_runtime([wa_channel(account), wa_channel(account, "nowhere", number="+15557654321"),
                     {**wa_channel(account, "badtoken"), "config": {**wa_channel(account)["config"],
                                                                     "authToken": "nope-nope", "phoneNumber": "+15550001111"}}])
    ok = rt.pm.hook.test_connection(channel=rt.config.get("wa"), settings=rt.settings)
    assert ok.ok and ok.status == "connected"
    words = " ".join(m for _, m in ok.checks)
    assert "is active" in words and "/api/channels/whatsapp/webhook" in words and "24 hours" in words
    missing = rt.pm.hook.test_connection(channel=rt.config.get("nowhere"), settings=rt.settings)
    assert not missing.ok and "+15557654321 is not a number of account" in missing.status
    bad = rt.pm.hook.test_connection(channel=rt.config.get("badtoken"), settings=rt.settings)
    assert not bad.ok and "Authentication error" in bad.status and "nope-nope" not in bad.status


def test_config_errors_say_what_to_fix(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "channels.json"
    path.write_text(json.dumps({"channels": [{"id": "wa", "type": "whatsapp", "name": "x", "config": {
        "accountSid": "AC123", "authToken": "t0ken-value", "phoneNumber": "whatsapp:+14155238886"}}]}))
    out = subprocess.run([sys.executable, "-c", "from sophon_core.cli import main; main()", "validate", str(path)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "SOPHON_PLUGINS": "whatsapp_twilio,default_agent",
                              "SOPHON_DATA_DIR": str(tmp_path / "d")})
    assert out.returncode == 1
    assert "wa: config.phoneNumber: 'whatsapp:+14155238886' is not E.164 (example: +14155238886; leave out " \
           "the whatsapp: prefix)" in out.stderr
    assert "wa: config.accountSid: 'AC123' is not a Twilio Account SID" in out.stderr
    assert "t0ken-value" not in out.stdout + out.stderr
