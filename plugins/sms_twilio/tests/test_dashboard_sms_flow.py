"""The seed's operator flow in a real browser: from an empty channels list, add an SMS
channel in the dashboard, test it, activate it, and it answers texts. Real gunicorn
(two workers), the Twilio sandbox, Playwright driving Debian's chromium, all on loopback."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect
from twilio.request_validator import RequestValidator

from sophon_core.testing import gunicorn
from sophon_sms_twilio.errors import AUTH_ERROR
from sophon_sms_twilio.webhook import EMPTY_TWIML

from sms_helpers import NUMBER, PEER, PUBLIC, WEBHOOK, inbound_form

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core's browser helpers
import browser  # noqa: E402

pytestmark = pytest.mark.e2e
ADMIN_TOKEN = "dashboard-e2e-admin-token-7c41d9"


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


def post_inbound(server_url: str, auth_token: str, account_sid: str, text: str) -> requests.Response:
    """Twilio's signed webhook for an SMS to NUMBER. Twilio calls the public URL
    (SOPHON_PUBLIC_URL, as behind a reverse proxy); it is signed for that URL."""
    form = inbound_form(account_sid, text)
    signature = RequestValidator(auth_token).compute_signature(PUBLIC + WEBHOOK, form)
    return requests.post(server_url + WEBHOOK, data=form, headers={"X-Twilio-Signature": signature}, timeout=15)


def test_add_test_and_activate_an_sms_channel_in_the_dashboard(sandbox, account, sms_env, tmp_path, tab):
    env = sms_env([], SOPHON_ADMIN_TOKEN=ADMIN_TOKEN)
    channels_path = Path(env["SOPHON_CHANNELS"])
    log = tmp_path / "g.log"
    page = tab.page
    watch = SecretWatch(page, account.auth_token)

    with gunicorn(env, workers=2, log=log) as server:
        page.goto(f"{server.url}/dashboard#token={ADMIN_TOKEN}")
        page.wait_for_url(re.compile(r"/dashboard#/channels$"))
        page.get_by_test_id("empty").wait_for()
        watch.check("the empty list")

        page.get_by_test_id("add-channel").click()
        sms = page.get_by_test_id("type-sms")
        assert sms.locator("strong").inner_text() == "SMS (Twilio)"
        sms.click()
        page.get_by_label("Account SID", exact=True).fill(account.sid)
        auth = page.get_by_label("Auth Token", exact=True)
        assert auth.get_attribute("type") == "password" and auth.get_attribute("autocomplete") == "new-password"
        auth.fill(account.auth_token)
        page.get_by_label("Phone number", exact=True).fill(NUMBER)
        assert page.get_by_test_id("channel-id").input_value() == "sms-1"
        page.get_by_test_id("save").click()

        page.wait_for_url(re.compile(r"#/channels/sms-1$"))
        expect(page.get_by_test_id("status")).to_have_text("disabled")
        assert page.get_by_test_id("value-authToken").inner_text() == "set"
        assert page.get_by_test_id("value-accountSid").inner_text() == account.sid
        # SOPHON_PUBLIC_URL is set: the URL to paste into Twilio is the public one, not the page's.
        assert page.get_by_test_id("webhook-url").inner_text() == PUBLIC + WEBHOOK
        watch.check("save")
        # saved but not active: Twilio's webhook is refused
        assert post_inbound(server.url, account.auth_token, account.sid, "too early").status_code == 404

        # the test's "Testing…" state (Twilio made slow for one request), then the plugin's words
        sandbox.inject(method="GET", path_suffix=f"/Accounts/{account.sid}.json", status=None, delay=3.0)
        page.get_by_test_id("test-connection").click()
        expect(page.get_by_test_id("test-connection")).to_have_text("Testing…")
        expect(page.get_by_test_id("test-connection")).to_be_disabled()
        expect(page.get_by_test_id("testing")).to_have_text("Testing…")
        expect(page.get_by_test_id("test-status")).to_have_text("connected")
        result = page.get_by_test_id("test-result")
        assert result.locator(".check").evaluate_all("els => els.map(e => e.dataset.level)") == ["ok"] * 3
        assert result.locator(".check .message").all_inner_texts() == [
            f"Twilio account {account.sid} is active (Full)",
            f"{NUMBER} is on the account and can send and receive SMS",
            f"incoming messages are sent to {PUBLIC}{WEBHOOK}"]
        watch.check("test connection")

        page.get_by_test_id("activate").click()
        page.get_by_test_id("deactivate").wait_for()
        expect(page.get_by_test_id("status")).to_have_text("connected")
        watch.check("activate")
        browser.screenshot(page, "dashboard-sms-detail.png")

        page.get_by_test_id("nav-channels").click()
        row = page.get_by_test_id("row-sms-1")
        expect(row.locator('[data-col="status"]')).to_have_text("connected")
        assert row.locator('[data-col="enabled"]').inner_text() == "yes"
        assert row.locator('[data-col="type"]').inner_text() == "SMS (Twilio)"
        assert row.locator('[data-col="address"]').inner_text() == NUMBER
        watch.check("list")
        browser.screenshot(page, "dashboard-sms-activated.png")

        # on disk: enabled, the token encrypted, never in plain text
        text = channels_path.read_text()
        assert account.auth_token not in text
        (ch,) = json.loads(text)["channels"]
        assert (ch["id"], ch["type"], ch["enabled"], ch.get("status")) == ("sms-1", "sms", True, "connected")
        assert ch["config"]["authToken"].startswith("enc:v1:")
        assert (ch["config"]["accountSid"], ch["config"]["phoneNumber"]) == (account.sid, NUMBER)
        assert ch["routing"] == {"agentId": "default", "dmBehavior": "per-peer"}

        # and it answers: a signed inbound SMS gets 200 and the reply reaches Twilio (the sandbox).
        # Each worker re-reads channels.json within a second of a change.
        deadline = time.monotonic() + 10
        while True:
            resp = post_inbound(server.url, account.auth_token, account.sid, "hello from the dashboard")
            if resp.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (resp.status_code, resp.text) == (200, EMPTY_TWIML)
        (m,) = sandbox.wait_for_messages(1, to=PEER, timeout=15)
        assert m["form"]["Body"] == 'Sophon default agent. You said: "hello from the dashboard"'
        assert m["form"]["From"] == NUMBER and m["auth_user"] == account.sid
    logged = log.read_text()
    assert "channel sms-1 (sms) added through the admin API" in logged
    assert account.auth_token not in logged and ADMIN_TOKEN not in logged


def test_an_invalid_field_then_a_failing_test_then_a_fix_by_edit(sandbox, account, sms_env, tmp_path, tab):
    """An invalid Account SID is shown next to its field and nothing is saved; a wrong Auth
    Token saves but its connection test fails in the plugin's words; Edit fixes it."""
    env = sms_env([], SOPHON_ADMIN_TOKEN=ADMIN_TOKEN)
    channels_path = Path(env["SOPHON_CHANNELS"])
    before = channels_path.read_bytes()
    page = tab.page
    wrong = "f" * 32
    watch = SecretWatch(page, account.auth_token, wrong)
    with gunicorn(env, workers=1, log=tmp_path / "g.log") as server:
        page.goto(f"{server.url}/dashboard#token={ADMIN_TOKEN}")
        page.wait_for_url(re.compile(r"#/channels$"))
        page.evaluate("location.hash = '#/add/sms'")
        page.get_by_test_id("field-accountSid").fill("ACnothex")
        page.get_by_test_id("field-authToken").fill(account.auth_token)
        page.get_by_test_id("field-phoneNumber").fill(NUMBER)
        page.get_by_test_id("save").click()

        error = page.locator('[data-field="config.accountSid"] .field-error')
        expect(error).to_have_text("'ACnothex' is not a Twilio Account SID ('AC' followed by 32 hex characters; "
                                   "copy it from the Twilio Console dashboard)")
        assert page.get_by_test_id("field-accountSid").get_attribute("aria-invalid") == "true"
        assert page.locator(".field-error").count() == 1  # only that field
        assert page.get_by_test_id("field-phoneNumber").get_attribute("aria-invalid") is None
        watch.check("422")
        browser.screenshot(page, "dashboard-sms-invalid-field.png")
        assert channels_path.read_bytes() == before

        page.get_by_test_id("field-accountSid").fill(account.sid)
        page.get_by_test_id("field-authToken").fill(wrong)
        page.get_by_test_id("save").click()
        page.wait_for_url(re.compile(r"#/channels/sms-1$"))
        page.get_by_test_id("test-connection").click()
        expect(page.get_by_test_id("test-status")).to_have_text(f"error: {AUTH_ERROR}")
        (check,) = page.get_by_test_id("test-result").locator(".check").all()
        assert check.get_attribute("data-level") == "error"
        assert check.locator(".message").inner_text() == AUTH_ERROR
        assert json.loads(channels_path.read_text())["channels"][0]["status"] == f"error: {AUTH_ERROR}"
        watch.check("failed test")

        page.get_by_test_id("edit").click()
        token = page.get_by_test_id("field-authToken")
        assert token.input_value() == ""
        expect(page.get_by_test_id("hint-config.authToken")).to_have_text(
            "Stored. Leave blank to keep the stored value.")
        assert page.get_by_test_id("field-phoneNumber").input_value() == NUMBER
        token.fill(account.auth_token)
        page.get_by_test_id("save").click()
        page.wait_for_url(re.compile(r"#/channels/sms-1$"))
        expect(page.get_by_test_id("status")).to_have_text("disabled")
        page.get_by_test_id("test-connection").click()
        expect(page.get_by_test_id("test-status")).to_have_text("connected")
        watch.check("fixed")
        text = channels_path.read_text()
        assert account.auth_token not in text and wrong not in text
    logged = (tmp_path / "g.log").read_text()
    assert account.auth_token not in logged and wrong not in logged
