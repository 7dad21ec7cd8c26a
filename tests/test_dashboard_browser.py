"""The dashboard in a real browser (Playwright + Debian's chromium) against the real
app served over HTTP on loopback, with the throwaway "dummy" channel type: its form
is generated from its schema, errors show next to their fields, the token gate,
edit, routing, remove, and markup in data stays text."""
from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from playwright.sync_api import expect

import browser
from dummy_channel import dummy_channel
from sophon_core import config as config_mod
from sophon_core.app import create_app

TOKEN = "browser-test-admin-token-5f1c2a"
STATIC = Path(__file__).resolve().parents[1] / "sophon_core" / "dashboard" / "static"


@pytest.fixture(scope="module")
def chromium():
    with browser.launch() as b:
        yield b


@pytest.fixture
def tab(chromium):
    with browser.open_tab(chromium) as t:
        yield t


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@pytest.fixture
def serve(make_runtime):
    """``serve(channels)`` -> (base URL, runtime): the app on a loopback port, in this process."""
    servers = []

    def start(channels):
        rt = make_runtime(channels, env={"SOPHON_ADMIN_TOKEN": TOKEN})
        httpd = make_server("127.0.0.1", 0, create_app(rt), server_class=_ThreadingServer,
                            handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}", rt

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def on_disk(rt) -> list[dict]:
    return json.loads(Path(rt.settings.channels_path).read_text())["channels"]


def loaded(rt):
    """channels.json as the server reads it (secrets decrypted)."""
    return config_mod.load_file(rt.settings.channels_path, rt.types, rt.pm, rt.settings, agents=list(rt.agents))


def signed_in(page, url, where="#/channels"):
    page.goto(f"{url}/dashboard#token={TOKEN}")
    page.wait_for_url(re.compile(r"#/channels$"))
    if where != "#/channels":
        page.evaluate("h => { location.hash = h; }", where)
    return page


def wrapper(page, field):
    return page.locator(f'[data-field="config.{field}"]')


def test_static_files_have_no_inline_code_or_markup_injection():
    html = (STATIC / "index.html").read_text()
    assert "<style" not in html and "style=" not in html
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", html))
    js = (STATIC / "app.js").read_text()
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "eval(" not in js


def test_dummy_type_gets_its_generated_form_and_the_whole_flow_works(serve, tab):
    url, rt = serve([])
    page = tab.page
    response = page.goto(f"{url}/dashboard#token={TOKEN}")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_url(re.compile(r"/dashboard#/channels$"))  # the token left the address bar
    assert page.evaluate("sessionStorage.getItem('sophon.adminToken')") == TOKEN
    page.get_by_test_id("empty").wait_for()

    page.get_by_test_id("add-channel").click()
    entry = page.get_by_test_id("type-dummy")
    assert entry.locator("strong").inner_text() == "Dummy"
    entry.click()
    page.wait_for_url(re.compile(r"#/add/dummy$"))

    # labels from the schema's titles (the name when there is none), tied to their inputs
    address = page.get_by_label("Address", exact=True)
    assert address.get_attribute("data-testid") == "field-address"
    assert address.get_attribute("type") == "text"
    assert address.get_attribute("required") is not None and address.get_attribute("aria-required") == "true"
    assert address.get_attribute("placeholder") == "e.g. dummy:bob"  # from the schema's examples
    assert "dummy address" in wrapper(page, "address").inner_text()  # the description
    assert wrapper(page, "address").locator(".req").inner_text().strip() == "*"
    token = page.get_by_label("Shared token", exact=True)
    assert token.get_attribute("data-testid") == "field-token"
    assert token.get_attribute("type") == "password"
    assert token.get_attribute("autocomplete") == "new-password"
    assert token.input_value() == "" and token.get_attribute("aria-required") == "true"
    fail_with = page.get_by_label("failWith", exact=True)  # no title: the property's name
    assert fail_with.evaluate("e => e.tagName") == "SELECT"
    assert fail_with.get_attribute("required") is None
    assert wrapper(page, "failWith").locator(".req").count() == 0
    assert fail_with.locator("option").all_inner_texts() == ["(not set)", "none", "permanent", "transient"]
    retries = page.get_by_label("Retries")
    assert retries.get_attribute("type") == "number" and retries.get_attribute("step") == "1"
    assert page.get_by_label("Loud").get_attribute("type") == "checkbox"
    # the envelope: id suggested, routing per-peer by default, agents from the API
    assert page.get_by_test_id("channel-id").input_value() == "dummy-1"
    assert page.get_by_test_id("routing-dmBehavior").input_value() == "per-peer"
    assert page.get_by_test_id("routing-agentId").input_value() == "default"

    page.get_by_test_id("channel-name").fill("Ann's line")
    address.fill("dummy:ann")
    token.fill("tok-secret-123")
    fail_with.select_option(label="none")
    retries.fill("3")
    page.get_by_label("Loud").check()
    page.get_by_test_id("save").click()
    page.wait_for_url(re.compile(r"#/channels/dummy-1$"))
    expect(page.locator("h1")).to_have_text("Ann's line")
    assert page.get_by_test_id("status").inner_text() == "disabled"
    assert page.get_by_test_id("value-token").inner_text() == "set"
    assert page.get_by_test_id("value-address").inner_text() == "dummy:ann"
    assert page.get_by_test_id("webhook-url").inner_text() == f"{url}/api/channels/dummy/webhook"
    assert "tok-secret-123" not in page.content()
    (stored,) = on_disk(rt)
    assert stored["enabled"] is False and stored["name"] == "Ann's line"
    assert stored["config"]["token"].startswith("enc:v1:")
    assert {k: v for k, v in stored["config"].items() if k != "token"} == {
        "address": "dummy:ann", "failWith": "none", "retries": 3, "loud": True}
    assert stored["routing"] == {"agentId": "default", "dmBehavior": "per-peer"}
    assert loaded(rt).get("dummy-1").config["token"] == "tok-secret-123"

    page.get_by_test_id("test-connection").click()
    result = page.get_by_test_id("test-result")
    page.get_by_test_id("test-status").wait_for()
    assert page.get_by_test_id("test-status").inner_text() == "connected"
    (check,) = result.locator(".check").all()
    assert check.get_attribute("data-level") == "ok"
    assert check.locator(".message").inner_text() == "dummy dummy:ann reachable"

    page.get_by_test_id("activate").click()
    page.get_by_test_id("deactivate").wait_for()
    assert page.get_by_test_id("status").inner_text() == "connected"
    assert page.get_by_test_id("test-status").inner_text() == "connected"  # the result stays in view
    assert on_disk(rt)[0]["enabled"] is True

    page.get_by_test_id("nav-channels").click()
    row = page.get_by_test_id("row-dummy-1")
    assert row.locator('[data-col="enabled"]').inner_text() == "yes"
    assert row.locator('[data-col="status"]').inner_text() == "connected"
    assert row.locator('[data-col="type"]').inner_text() == "Dummy"
    assert row.locator('[data-col="address"]').inner_text() == "dummy:ann"
    browser.screenshot(page, "dashboard-dummy-activated.png")


def test_invalid_fields_are_shown_next_to_each_field_and_nothing_is_saved(serve, tab):
    url, rt = serve([dummy_channel("d1")])
    before = Path(rt.settings.channels_path).read_bytes()
    page = signed_in(tab.page, url, "#/add/dummy")
    assert page.get_by_test_id("channel-id").input_value() == "dummy-1"
    page.get_by_test_id("field-address").fill("bob")
    page.get_by_test_id("field-token").fill("tiny12")
    page.get_by_test_id("save").click()

    address_error = wrapper(page, "address").locator(".field-error")
    address_error.wait_for()
    assert address_error.inner_text() == "'bob' is not a dummy address (example: dummy:bob)"
    assert page.get_by_test_id("field-address").get_attribute("aria-invalid") == "true"
    assert wrapper(page, "token").locator(".field-error").inner_text() == "value is too short (minLength 8)"
    assert page.get_by_test_id("field-token").get_attribute("aria-invalid") == "true"
    assert page.get_by_test_id("field-retries").get_attribute("aria-invalid") is None
    assert page.get_by_test_id("form-errors").inner_text() == \
        "Not saved: fix the fields marked below. Nothing was changed."
    # the error is announced with its field
    described = page.get_by_test_id("field-address").get_attribute("aria-describedby").split()
    assert address_error.get_attribute("id") in described
    browser.screenshot(page, "dashboard-invalid-field.png")
    assert Path(rt.settings.channels_path).read_bytes() == before

    # the plugin's own validation, a missing required field, an id taken and a bad id
    page.get_by_test_id("field-address").fill("dummy:reserved")
    page.get_by_test_id("field-token").fill("")
    page.get_by_test_id("save").click()
    wrapper(page, "token").locator(".field-error").wait_for()
    assert wrapper(page, "token").locator(".field-error").inner_text() == \
        "missing required field 'token' (shared secret)"
    assert wrapper(page, "address").locator(".field-error").count() == 0  # cleared; and the plugin
    page.get_by_test_id("field-token").fill("long-enough-token")     # checks only a valid schema
    page.get_by_test_id("save").click()
    expect(wrapper(page, "address").locator(".field-error")).to_have_text("dummy:reserved is reserved; pick another")
    assert wrapper(page, "token").locator(".field-error").count() == 0

    page.get_by_test_id("field-address").fill("dummy:zed")
    page.get_by_test_id("channel-id").fill("d1")
    page.get_by_test_id("save").click()
    id_error = page.locator('[data-field="id"] .field-error')
    expect(id_error).to_have_text("a channel with id 'd1' exists already; choose another id")
    assert page.get_by_test_id("channel-id").get_attribute("aria-invalid") == "true"

    page.get_by_test_id("channel-id").fill("no spaces allowed")
    page.get_by_test_id("save").click()
    expect(id_error).to_have_text("'no spaces allowed' is not a valid id (letters, digits, '.', '_' and '-', "
                                  "at most 64, e.g. sms-twilio)")
    assert Path(rt.settings.channels_path).read_bytes() == before

    page.get_by_test_id("channel-id").fill("d2")
    page.get_by_test_id("save").click()
    page.wait_for_url(re.compile(r"#/channels/d2$"))
    assert [c["id"] for c in on_disk(rt)] == ["d1", "d2"]


def test_without_a_token_only_the_sign_in_form_shows(serve, tab):
    url, _ = serve([dummy_channel("d1", name="Private line", address="dummy:carol")])
    page = tab.page
    api_calls = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
    page.goto(f"{url}/dashboard#/channels")
    page.get_by_test_id("signin").wait_for()
    token = page.get_by_label("Admin token")
    assert token.get_attribute("type") == "password"
    content = page.content()
    assert "Private line" not in content and "dummy:carol" not in content and "d1" not in content
    assert api_calls == []  # nothing to ask without a token
    assert page.get_by_test_id("nav-channels").is_hidden()

    token.fill(TOKEN)
    page.get_by_test_id("signin-submit").click()
    row = page.get_by_test_id("row-d1")
    assert row.locator('[data-col="name"]').inner_text() == "Private line"
    assert all(TOKEN not in u for u in api_calls)  # header only, never in a URL
    assert page.context.cookies() == []

    page.get_by_test_id("signout").click()
    page.get_by_test_id("signin").wait_for()
    assert page.evaluate("sessionStorage.getItem('sophon.adminToken')") is None
    assert "Private line" not in page.content()


def test_a_wrong_token_gets_401_and_the_sign_in_form(serve, tab):
    url, _ = serve([dummy_channel("d1", name="Private line")])
    page = tab.page
    statuses = []
    page.on("response", lambda r: statuses.append((r.url.split(url)[-1], r.status)) if "/api/" in r.url else None)
    page.goto(f"{url}/dashboard#token=not-the-token")
    error = page.get_by_test_id("signin-error")
    assert "not accepted" in error.inner_text()
    assert ("/api/channels", 401) in statuses
    assert "Private line" not in page.content()
    assert page.evaluate("sessionStorage.getItem('sophon.adminToken')") is None
    assert "not-the-token" not in page.url

    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_test_id("signin-submit").click()
    page.get_by_test_id("row-d1").wait_for()
    assert ("/api/channels", 200) in statuses


def test_remove_asks_for_confirmation_first(serve, tab):
    url, rt = serve([dummy_channel("d1"), dummy_channel("d2", "dummy:ann")])
    page = signed_in(tab.page, url, "#/channels/d1")
    page.get_by_test_id("remove").click()
    confirm = page.get_by_test_id("confirm-remove")
    assert confirm.inner_text() == "Yes, remove d1"
    assert [c["id"] for c in on_disk(rt)] == ["d1", "d2"]  # asking removes nothing
    page.get_by_test_id("cancel-remove").click()
    assert confirm.is_hidden()

    page.get_by_test_id("remove").click()
    confirm.click()
    page.wait_for_url(re.compile(r"#/channels$"))
    page.get_by_test_id("row-d2").wait_for()
    assert page.get_by_test_id("row-d1").count() == 0
    assert [c["id"] for c in on_disk(rt)] == ["d2"]


def test_edit_with_a_blank_secret_keeps_the_stored_one(serve, tab):
    url, rt = serve([dummy_channel("d1", token="original-secret")])
    page = tab.page
    patches = []
    page.on("request", lambda r: patches.append(r.post_data) if r.method == "PATCH" else None)
    signed_in(page, url, "#/channels/d1")
    assert page.get_by_test_id("status").inner_text() == "not tested"
    page.get_by_test_id("edit").click()
    page.wait_for_url(re.compile(r"#/channels/d1/edit$"))
    token = page.get_by_test_id("field-token")
    assert token.get_attribute("type") == "password" and token.input_value() == ""
    assert "leave blank to keep the stored value" in wrapper(page, "token").inner_text().lower()
    assert page.get_by_test_id("field-address").input_value() == "dummy:bob"
    assert "original-secret" not in page.content()

    page.get_by_test_id("field-address").fill("dummy:carol")
    page.get_by_test_id("save").click()
    page.wait_for_url(re.compile(r"#/channels/d1$"))
    assert page.get_by_test_id("value-address").inner_text() == "dummy:carol"
    assert page.get_by_test_id("value-token").inner_text() == "set"
    assert json.loads(patches[-1]) == {"config": {"address": "dummy:carol"}}  # only what changed
    (stored,) = on_disk(rt)
    assert stored["config"]["token"].startswith("enc:v1:")  # encrypted now that Sophon wrote the file
    assert loaded(rt).get("d1").config["token"] == "original-secret"

    # a typed secret replaces the stored one; a name-only edit leaves config alone
    page.get_by_test_id("edit").click()
    page.get_by_test_id("field-token").fill("replacement-secret")
    page.get_by_test_id("channel-name").fill("Renamed")
    page.get_by_test_id("save").click()
    page.wait_for_url(re.compile(r"#/channels/d1$"))
    expect(page.locator("h1")).to_have_text("Renamed")
    assert json.loads(patches[-1]) == {"name": "Renamed", "config": {"token": "replacement-secret"}}
    assert loaded(rt).get("d1").config["token"] == "replacement-secret"
    assert "replacement-secret" not in page.content()


def test_routing_and_deactivate(serve, tab):
    url, rt = serve([dummy_channel("d1", routing={"agentId": "default", "dmBehavior": "per-peer"})])
    page = signed_in(tab.page, url, "#/channels/d1")
    page.get_by_test_id("routing").click()
    page.get_by_test_id("routing-dmBehavior").select_option("main-session")
    page.get_by_test_id("save-routing").click()
    expect(page.locator("dd", has_text="main-session")).to_have_text("main-session")
    assert on_disk(rt)[0]["routing"] == {"agentId": "default", "dmBehavior": "main-session"}

    page.get_by_test_id("deactivate").click()
    page.get_by_test_id("activate").wait_for()
    assert page.get_by_test_id("status").inner_text() == "disabled"
    assert on_disk(rt)[0]["enabled"] is False

    # removed meanwhile (another admin, the CLI): the failure is shown, not swallowed
    gone = urllib.request.Request(f"{url}/api/channels/d1", method="DELETE",
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert urllib.request.urlopen(gone, timeout=15).status == 204
    page.get_by_test_id("activate").click()
    expect(page.get_by_test_id("action-error")).to_have_text("no such channel: no channel 'd1' (have: none)")
    expect(page.get_by_test_id("activate")).to_be_enabled()


def test_markup_in_a_channel_name_is_shown_as_text(serve, tab):
    evil = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    url, _ = serve([dummy_channel("d1", name=evil)])
    page = signed_in(tab.page, url)
    cell = page.get_by_test_id("row-d1").locator('[data-col="name"]')
    assert cell.inner_text() == evil
    assert page.locator("main img, main b").count() == 0
    page.get_by_test_id("row-d1").locator("a").click()
    expect(page.locator("h1")).to_have_text(evil)
    page.get_by_test_id("remove").click()
    assert "remove the channel " + evil in page.get_by_test_id("remove-confirmation").inner_text().lower()
    assert page.locator("main img, main b").count() == 0
    assert page.evaluate("window.__pwned") is None
