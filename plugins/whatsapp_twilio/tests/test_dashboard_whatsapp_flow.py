"""The operator flow for the new WhatsApp channel type in a real browser, with no dashboard
change: from an empty channels list, Add Channel offers "WhatsApp (Twilio)" next to
"SMS (Twilio)", its form is generated from the plugin's schema, a bad sender number is
refused at its field, then the channel is saved, tested in the plugin's words, activated,
and answers a signed WhatsApp message. Real gunicorn (two workers), the Twilio sandbox,
Playwright driving Debian's chromium, all on loopback."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from sophon_core.testing import free_port, gunicorn
from sophon_sms_twilio.webhook import EMPTY_TWIML

from wa_helpers import SENDER, STATUS, WA_PEER, WA_SENDER, WEBHOOK

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core's browser helpers
import browser  # noqa: E402

pytestmark = pytest.mark.e2e
ADMIN_TOKEN = "dashboard-wa-e2e-admin-token-3b9e04"
PLUGINS = "whatsapp_twilio,sms_twilio,default_agent"
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "sophon_whatsapp_twilio" / "config.schema.json")
                    .read_text())
PROPS = SCHEMA["properties"]


@pytest.fixture(scope="module")
def chromium():
    with browser.launch() as b:
        yield b


@pytest.fixture
def tab(chromium):
    with browser.open_tab(chromium) as t:
        yield t


class SecretWatch:
    """Fails when an auth token shows up in the page or in any admin API response the browser saw."""

    def __init__(self, page, *secrets: str):
        self.page, self.secrets = page, secrets
        self.responses, self.read = [], 0
        page.on("response", lambda r: self.responses.append(r) if "/api/" in r.url else None)

    def check(self, step: str) -> None:
        content = self.page.content()
        for r in self.responses[self.read:]:
            body = r.body().decode("utf-8", "replace") if r.status != 204 else ""
            for secret in self.secrets:
                assert secret not in body, f"{r.request.method} {r.url} returned an auth token ({step})"
        for secret in self.secrets:
            assert secret not in content, f"an auth token is in the page after: {step}"
        self.read = len(self.responses)


def field(page, name: str):
    """The generated field for config property ``name``: its wrapper."""
    return page.locator(f'[data-field="config.{name}"]')


def test_add_test_and_activate_a_whatsapp_channel_in_the_dashboard(sandbox, account, wa_env, tmp_path, tab):
    # Twilio calls the server itself here: SOPHON_PUBLIC_URL is the server's own URL, so the
    # sandbox's signature (for the URL it posts to) matches the one the server checks.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = wa_env([], SOPHON_ADMIN_TOKEN=ADMIN_TOKEN, SOPHON_PUBLIC_URL=url, SOPHON_PLUGINS=PLUGINS)
    channels_path = Path(env["SOPHON_CHANNELS"])
    before = channels_path.read_bytes()
    log = tmp_path / "g.log"
    page = tab.page
    watch = SecretWatch(page, account.auth_token)

    def inbound(text: str) -> tuple[int, str]:
        return sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body=text, url=server.url + WEBHOOK)

    with gunicorn(env, port=port, workers=2, log=log) as server:
        assert server.url == url
        page.goto(f"{server.url}/dashboard#token={ADMIN_TOKEN}")
        page.wait_for_url(re.compile(r"/dashboard#/channels$"))
        page.get_by_test_id("empty").wait_for()
        watch.check("the empty list")

        # Add Channel: both Twilio types, each with its schema's description
        page.get_by_test_id("add-channel").click()
        page.get_by_test_id("types").wait_for()
        assert page.get_by_test_id("type-sms").locator("strong").inner_text() == "SMS (Twilio)"
        wa = page.get_by_test_id("type-whatsapp")
        assert wa.locator("strong").inner_text() == "WhatsApp (Twilio)"
        assert wa.locator(".hint").inner_text() == SCHEMA["description"]
        wa.click()

        # the form generated from config.schema.json: titles as labels, descriptions, kinds
        page.wait_for_url(re.compile(r"#/add/whatsapp$"))
        expect(page.locator("h1")).to_have_text("Add WhatsApp (Twilio)")
        assert page.get_by_test_id("channel-id").input_value() == "whatsapp-1"
        labels = {"accountSid": "Account SID", "authToken": "Auth Token",
                  "phoneNumber": "WhatsApp sender number", "publicUrl": "Public URL"}
        assert {name: prop["title"] for name, prop in PROPS.items()} == labels
        for name, title in labels.items():
            inp = page.get_by_label(title, exact=True)
            assert inp.get_attribute("data-testid") == f"field-{name}"
            assert field(page, name).locator("p.hint").first.inner_text() == PROPS[name]["description"]
            described = inp.get_attribute("aria-describedby").split()
            assert page.locator(f"#{described[0]}").inner_text() == PROPS[name]["description"]
            assert (inp.get_attribute("aria-required") == "true") == (name in SCHEMA["required"])
        auth = page.get_by_label("Auth Token", exact=True)
        assert auth.get_attribute("type") == "password" and auth.get_attribute("autocomplete") == "new-password"
        for name in ("accountSid", "phoneNumber", "publicUrl"):
            assert page.get_by_test_id(f"field-{name}").get_attribute("type") == "text"
        assert page.get_by_label("WhatsApp sender number", exact=True).get_attribute("placeholder") == \
            "e.g. +14155238886"
        watch.check("the add form")

        # a sender with the whatsapp: prefix is refused at its field, in the schema's words
        page.get_by_label("Account SID", exact=True).fill(account.sid)
        auth.fill(account.auth_token)
        phone = page.get_by_label("WhatsApp sender number", exact=True)
        phone.fill(WA_SENDER)
        page.get_by_test_id("save").click()
        error = field(page, "phoneNumber").locator(".field-error")
        expect(error).to_have_text(f"'{WA_SENDER}' {PROPS['phoneNumber']['x-errorMessage']}")
        expect(page.get_by_test_id("form-errors")).to_contain_text("Not saved: fix the fields marked below.")
        assert phone.get_attribute("aria-invalid") == "true"
        assert page.locator(".field-error").count() == 1  # only that field
        assert page.get_by_test_id("field-accountSid").get_attribute("aria-invalid") is None
        assert page.url.endswith("#/add/whatsapp")
        watch.check("422")
        browser.screenshot(page, "dashboard-whatsapp-invalid-field.png")
        assert channels_path.read_bytes() == before

        # fixed: saved, inactive, never tested
        phone.fill(SENDER)
        page.get_by_test_id("save").click()
        page.wait_for_url(re.compile(r"#/channels/whatsapp-1$"))
        expect(page.get_by_test_id("status")).to_have_text("disabled")
        assert page.get_by_test_id("enabled").inner_text() == "no"
        details = page.get_by_test_id("details")
        assert details.locator("dt:text-is('Last connection test') + dd").inner_text() == "never"
        assert details.locator("dt:text-is('Type') + dd").inner_text() == "WhatsApp (Twilio)"
        assert page.get_by_test_id("value-authToken").inner_text() == "set"
        assert page.get_by_test_id("value-accountSid").inner_text() == account.sid
        assert page.get_by_test_id("value-phoneNumber").inner_text() == SENDER
        assert page.get_by_test_id("value-publicUrl").inner_text() == "—"
        assert page.get_by_test_id("webhook-url").inner_text() == url + WEBHOOK
        watch.check("save")
        # saved but not active: Twilio's webhook is refused
        assert inbound("too early")[0] == 404

        page.get_by_test_id("nav-channels").click()
        row = page.get_by_test_id("row-whatsapp-1")
        expect(row.locator('[data-col="status"]')).to_have_text("disabled")
        assert row.locator('[data-col="enabled"]').inner_text() == "no"
        assert row.locator('[data-col="type"]').inner_text() == "WhatsApp (Twilio)"
        assert row.locator('[data-col="address"]').inner_text() == SENDER
        row.locator('[data-col="name"] a').click()
        page.wait_for_url(re.compile(r"#/channels/whatsapp-1$"))

        # Test Connection: the plugin's checks, in its words
        page.get_by_test_id("test-connection").click()
        expect(page.get_by_test_id("test-status")).to_have_text("connected")
        result = page.get_by_test_id("test-result")
        assert result.locator(".check").evaluate_all("els => els.map(e => e.dataset.level)") == ["ok"] * 4
        messages = result.locator(".check .message").all_inner_texts()
        assert messages[:3] == [
            f"Twilio account {account.sid} is active (Full)",
            f"{SENDER} is a number of this account",
            (f"set the sender's webhook 'When a message comes in' to {url}{WEBHOOK} and its status callback "
             f"to {url}{STATUS} (HTTP POST) in the Twilio Console")]
        assert "within 24 hours" in messages[3] and "template" in messages[3]
        expect(result).to_contain_text("The channel is not active yet: activate it to answer messages.")
        expect(page.get_by_test_id("status")).to_have_text("disabled")
        watch.check("test connection")

        page.get_by_test_id("activate").click()
        page.get_by_test_id("deactivate").wait_for()
        expect(page.get_by_test_id("status")).to_have_text("connected")
        assert page.get_by_test_id("enabled").inner_text() == "yes"
        watch.check("activate")
        browser.screenshot(page, "dashboard-whatsapp-detail.png")

        page.get_by_test_id("nav-channels").click()
        row = page.get_by_test_id("row-whatsapp-1")
        expect(row.locator('[data-col="status"]')).to_have_text("connected")
        assert row.locator('[data-col="enabled"]').inner_text() == "yes"
        watch.check("list")
        browser.screenshot(page, "dashboard-whatsapp-activated.png")

        # on disk: enabled, the token encrypted, never in plain text, no publicUrl
        text = channels_path.read_text()
        assert account.auth_token not in text
        (ch,) = json.loads(text)["channels"]
        assert (ch["id"], ch["type"], ch["enabled"], ch.get("status")) == ("whatsapp-1", "whatsapp", True, "connected")
        assert ch["config"]["authToken"].startswith("enc:v1:")
        assert ch["config"] == {"accountSid": account.sid, "authToken": ch["config"]["authToken"],
                                "phoneNumber": SENDER}
        assert ch["routing"] == {"agentId": "default", "dmBehavior": "per-peer"}

        # and it answers: a signed WhatsApp message gets 200 and the reply reaches Twilio (the
        # sandbox), from the whatsapp: sender. Each worker re-reads channels.json within a second.
        deadline = time.monotonic() + 10
        while True:
            status, body = inbound("hello from the dashboard")
            if status != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (status, body) == (200, EMPTY_TWIML)
        (m,) = sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)
        assert m["form"]["Body"] == 'Sophon default agent. You said: "hello from the dashboard"'
        assert m["form"]["From"] == WA_SENDER and m["auth_user"] == account.sid
        assert m["form"].get("StatusCallback") == url + STATUS
    logged = log.read_text()
    assert "channel whatsapp-1 (whatsapp) added through the admin API" in logged
    assert account.auth_token not in logged and ADMIN_TOKEN not in logged
