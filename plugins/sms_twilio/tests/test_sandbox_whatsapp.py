"""The Twilio sandbox speaking WhatsApp: senders, the inbound form, hosted media, outbound
messages settled asynchronously (24-hour window, media fetch), and status callbacks.

Real HTTP on 127.0.0.1 only: the official ``twilio`` SDK talks to the sandbox; a tiny
ThreadingHTTPServer (``App``) stands in for the application, receiving the webhooks and the
status callbacks and serving the media an outbound message points at. Every wait is bounded.
Auth tokens are compared with ``hmac.compare_digest`` only, so no failure prints one.
"""

from __future__ import annotations

import base64
import faulthandler
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_schema_validator import OAS30Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator

from sophon_sms_twilio.sandbox import (
    DEMO_ACCOUNT_SID,
    DEMO_AUTH_TOKEN,
    DEMO_WHATSAPP_NUMBER,
    Sandbox,
    SandboxError,
    demo_sandbox,
)
from sophon_sms_twilio.sandbox import server as sandbox_server

HTTP_TIMEOUT = 5  # seconds, for every client call a test makes
PER_TEST_LIMIT = 60  # seconds; a hung test dumps its stacks and ends the run

SENDER = "+15005550020"  # the account's WhatsApp sender
SMS_ONLY = "+15005550006"  # the account's number that is not on WhatsApp
USER = "+15551230001"  # the WhatsApp user
WA_SENDER, WA_USER = "whatsapp:" + SENDER, "whatsapp:" + USER

INBOUND_FIELDS = {
    "SmsMessageSid", "NumMedia", "ProfileName", "MessageType", "SmsSid", "WaId", "SmsStatus", "Body", "To",
    "NumSegments", "ReferralNumMedia", "MessageSid", "AccountSid", "From", "ApiVersion",
}
CALLBACK_FIELDS = {
    "ChannelPrefix", "ApiVersion", "MessageStatus", "SmsSid", "SmsStatus", "ChannelInstallSid", "To", "From",
    "MessageSid", "AccountSid", "ChannelToAddress",
}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

# The Message resource of the vendored OpenAPI document: every 201 here must honour it.
DOC = json.loads((Path(__file__).parent / "contract" / "twilio_api_v2010.json").read_text(encoding="utf-8"))
REGISTRY = Registry().with_resource("urn:twilio", DRAFT4.create_resource(DOC))
MESSAGE_SCHEMA = DOC["components"]["schemas"]["api.v2010.account.message"]


def assert_message_resource(body: dict) -> None:
    validator = OAS30Validator({"$ref": "urn:twilio#/components/schemas/api.v2010.account.message"}, registry=REGISTRY)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not problems, problems
    assert set(body) == set(MESSAGE_SCHEMA["properties"]), set(body) ^ set(MESSAGE_SCHEMA["properties"])


@pytest.fixture(autouse=True)
def _bounded_in_time():
    faulthandler.dump_traceback_later(PER_TEST_LIMIT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


class App:
    """The application: records every request; POST answers empty TwiML, GET serves ``files``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.files: dict[str, tuple[int, bytes, str | None, dict]] = {}
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _record(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8") if length else ""
                req = {
                    "method": self.command,
                    "path": self.path,
                    "url": f"http://127.0.0.1:{app.port}{self.path}",
                    "headers": dict(self.headers.items()),
                    "params": dict(urllib.parse.parse_qsl(raw, keep_blank_values=True)),
                }
                app.requests.append(req)
                return req

            def _answer(self, status: int, data: bytes, content_type: str | None, headers: dict) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._record()
                self._answer(200, b"<Response/>", "text/xml", {})

            def do_GET(self) -> None:
                self._record()
                status, data, content_type, headers = app.files.get(self.path, (404, b"no such file", "text/plain", {}))
                self._answer(status, data, content_type, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, data: bytes, content_type: str | None, status: int = 200, **headers: str) -> str:
        self.files[path] = (status, data, content_type, headers)
        return self.url(path)

    def received(self, method: str, prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(prefix)]

    def __enter__(self) -> "App":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    def __init__(self, sandbox: Sandbox, app: App) -> None:
        self.sandbox, self.app = sandbox, app
        self.account = sandbox.add_account(type="Full")
        self.other = sandbox.add_account(type="Full")
        sandbox.add_number(self.account.sid, SENDER, sms_url=app.url("/whatsapp"), whatsapp=True)
        sandbox.add_number(self.account.sid, SMS_ONLY, sms_url=app.url("/sms"))
        sandbox.add_number(self.other.sid, "+15005550021", whatsapp=True)
        self.responses: list[requests.Response] = []
        http_client = TwilioHttpClient(
            timeout=HTTP_TIMEOUT, request_hooks={"response": [lambda response, *a, **k: self.responses.append(response)]}
        )
        self.client = sandbox.twilio_client(self.account.sid, http_client=http_client)

    def validator(self, account=None) -> RequestValidator:
        return RequestValidator((account or self.account).auth_token)

    def send(self, **kwargs: Any):
        """messages.create through the SDK, checking the 201 against the contract."""
        message = self.client.messages.create(**kwargs)
        recorded = self.sandbox.message(message.sid)["response"]
        assert_message_resource(recorded)
        return message

    def post_message(self, **form: Any) -> requests.Response:
        return requests.post(
            f"{self.sandbox.url}/2010-04-01/Accounts/{self.account.sid}/Messages.json",
            auth=(self.account.sid, self.account.auth_token),
            data=form,
            timeout=HTTP_TIMEOUT,
        )


@pytest.fixture
def world():
    with App() as app, Sandbox() as sandbox:
        yield World(sandbox, app)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------


def test_whatsapp_sender_keeps_the_incoming_number_resource(world):
    (number,) = world.client.incoming_phone_numbers.list(phone_number=SENDER)
    assert number.capabilities == {"voice": True, "sms": True, "mms": False, "fax": False}
    assert number.sms_url == world.app.url("/whatsapp")
    page = requests.get(
        f"{world.sandbox.url}/2010-04-01/Accounts/{world.account.sid}/IncomingPhoneNumbers.json",
        auth=(world.account.sid, world.account.auth_token),
        timeout=HTTP_TIMEOUT,
    ).json()
    by_number = {n["phone_number"]: n for n in page["incoming_phone_numbers"]}
    assert set(by_number[SENDER]) == set(by_number[SMS_ONLY])  # the same resource, no WhatsApp flag
    assert not any("whatsapp" in key.lower() for key in by_number[SENDER])

    info = requests.get(world.sandbox.url + "/_sandbox/info", timeout=HTTP_TIMEOUT).json()
    assert sorted((s["address"], s["account_sid"]) for s in info["whatsapp_senders"]) == [
        (WA_SENDER, world.account.sid),
        ("whatsapp:+15005550021", world.other.sid),
    ]
    assert [s["sms_url"] for s in info["whatsapp_senders"] if s["address"] == WA_SENDER] == [world.app.url("/whatsapp")]
    assert len(info["numbers"]) == 3


# --------------------------------------------------------------------------------------
# Inbound
# --------------------------------------------------------------------------------------


def test_inbound_whatsapp_form_is_twilios_and_signed(world):
    status, text = world.sandbox.send_inbound(from_=WA_USER, to=WA_SENDER, body="hello", profile_name="Ada Lovelace")
    assert (status, text) == (200, "<Response/>")
    (req,) = world.app.received("POST", "/whatsapp")
    params = req["params"]
    assert set(params) == INBOUND_FIELDS
    assert (params["From"], params["To"], params["Body"]) == (WA_USER, WA_SENDER, "hello")
    assert (params["ProfileName"], params["WaId"], params["MessageType"]) == ("Ada Lovelace", "15551230001", "text")
    assert (params["NumMedia"], params["NumSegments"], params["ReferralNumMedia"]) == ("0", "1", "0")
    assert (params["SmsStatus"], params["ApiVersion"], params["AccountSid"]) == ("received", "2010-04-01", world.account.sid)
    assert re.fullmatch(r"SM[0-9a-f]{32}", params["MessageSid"])
    assert params["MessageSid"] == params["SmsSid"] == params["SmsMessageSid"]
    assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"

    signature = req["headers"]["X-Twilio-Signature"]
    assert world.validator().validate(req["url"], params, signature)
    assert not world.validator(world.other).validate(req["url"], params, signature)
    assert not world.validator().validate(req["url"], {**params, "Body": "tampered"}, signature)
    (recorded,) = world.sandbox.inbound()
    assert recorded["message_sid"] == params["MessageSid"] and recorded["form"] == params
    assert world.sandbox.window_open(USER, SENDER) and world.sandbox.window_open(WA_USER, WA_SENDER)

    form = world.sandbox.inbound_form(
        from_=WA_USER, to=WA_SENDER, body="x", account_sid=world.account.sid, profile_name="Ada", message_sid="SM" + "1" * 32
    )
    assert set(form) == INBOUND_FIELDS and form["MessageSid"] == "SM" + "1" * 32 and form["ProfileName"] == "Ada"


def test_inbound_whatsapp_media_is_hosted_behind_auth_and_a_redirect(world):
    world.sandbox.send_inbound(from_=WA_USER, to=WA_SENDER, body="", media_files=[(PNG, "image/png")])
    (req,) = world.app.received("POST", "/whatsapp")
    params = req["params"]
    assert set(params) == INBOUND_FIELDS | {"MediaUrl0", "MediaContentType0"}
    sid = params["MessageSid"]
    assert re.fullmatch(r"MM[0-9a-f]{32}", sid)
    assert (params["NumMedia"], params["MediaContentType0"], params["MessageType"]) == ("1", "image/png", "image")
    media_url = params["MediaUrl0"]
    prefix = f"{world.sandbox.url}/2010-04-01/Accounts/{world.account.sid}/Messages/{sid}/Media/"
    assert media_url.startswith(prefix) and re.fullmatch(r"ME[0-9a-f]{32}", media_url[len(prefix):])
    assert world.validator().validate(req["url"], params, req["headers"]["X-Twilio-Signature"])

    anonymous = requests.get(media_url, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401,
    }
    other = requests.get(media_url, auth=(world.other.sid, world.other.auth_token), allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert other.status_code == 401
    authed = requests.get(media_url, auth=(world.account.sid, world.account.auth_token), allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert authed.status_code == 307
    location = authed.headers["Location"]
    assert re.fullmatch(re.escape(world.sandbox.url) + r"/_media/[A-Za-z0-9_-]{20,}", location)

    cdn = requests.get(location, timeout=HTTP_TIMEOUT)  # the CDN wants no auth
    assert cdn.status_code == 200 and cdn.content == PNG
    assert cdn.headers["Content-Type"] == "image/png" and cdn.headers["Content-Length"] == str(len(PNG))
    missing = requests.get(prefix + "ME" + "0" * 32, auth=(world.account.sid, world.account.auth_token), timeout=HTTP_TIMEOUT)
    assert missing.status_code == 404 and missing.json()["code"] == 20404
    assert requests.get(world.sandbox.url + "/_media/nope", timeout=HTTP_TIMEOUT).status_code == 404

    # An app that follows the redirect with its credentials still attached (requests does, on one host).
    followed = requests.get(media_url, auth=(world.account.sid, world.account.auth_token), timeout=HTTP_TIMEOUT)
    assert followed.content == PNG

    media_sid = media_url.rsplit("/", 1)[1]
    records = [(r["status"], r["auth_user"], r.get("cdn", False), r.get("authorization")) for r in world.sandbox.requests()]
    assert records == [
        (401, None, False, None),
        (401, world.other.sid, False, None),
        (307, world.account.sid, False, None),
        (200, None, True, False),
        (404, world.account.sid, False, None),
        (404, None, True, False),
        (307, world.account.sid, False, None),
        (200, world.account.sid, True, True),  # the app sent its auth to the CDN
    ]
    assert [r.get("media_sid") for r in world.sandbox.requests() if r["status"] in (200, 307)] == [media_sid] * 4
    dumped = json.dumps(world.sandbox.requests())
    assert world.account.auth_token not in dumped and world.other.auth_token not in dumped


def test_add_media_lying_type_and_redirect_elsewhere(world):
    sid = "MM" + "a" * 32
    auth = (world.account.sid, world.account.auth_token)
    lying = world.sandbox.add_media(world.account.sid, sid, b"<html>not a jpeg</html>", "image/jpeg", served_type="text/html")
    served = requests.get(lying, auth=auth, timeout=HTTP_TIMEOUT)
    assert served.content == b"<html>not a jpeg</html>" and served.headers["Content-Type"] == "text/html"

    evil = world.sandbox.add_media(
        world.account.sid, sid, PNG, "image/png", redirect_to="http://169.254.169.254/latest/meta-data/"
    )
    response = requests.get(evil, auth=auth, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert (response.status_code, response.headers["Location"]) == (307, "http://169.254.169.254/latest/meta-data/")

    with pytest.raises(ValueError, match="Message SID"):
        world.sandbox.add_media(world.account.sid, "XX1", PNG, "image/png")
    with pytest.raises(ValueError, match="no sandbox account"):
        world.sandbox.add_media("AC" + "0" * 32, sid, PNG, "image/png")


def test_inbound_whatsapp_refusals(world):
    with pytest.raises(SandboxError, match="one media"):
        world.sandbox.send_inbound(from_=WA_USER, to=WA_SENDER, media_files=[(PNG, "image/png"), (PNG, "image/png")])
    with pytest.raises(SandboxError, match="not a WhatsApp sender"):
        world.sandbox.send_inbound(from_=WA_USER, to="whatsapp:" + SMS_ONLY, body="x")
    with pytest.raises(SandboxError, match="whatsapp:\\+E.164"):
        world.sandbox.send_inbound(from_=USER, to=WA_SENDER, body="x")
    assert world.app.requests == [] and not world.sandbox.window_open(USER, SENDER)


def test_control_inbound_whatsapp(world):
    response = requests.post(
        world.sandbox.url + "/_sandbox/inbound",
        json={
            "from": WA_USER,
            "to": WA_SENDER,
            "body": "see attached",
            "profile_name": "Grace",
            "media_files": [{"content_base64": base64.b64encode(b"%PDF-1.4 hi").decode(), "content_type": "application/pdf"}],
        },
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    (req,) = world.app.received("POST", "/whatsapp")
    params = req["params"]
    assert result["status"] == 200 and result["message_sid"] == params["MessageSid"]
    assert result["media_urls"] == [params["MediaUrl0"]]
    assert (params["ProfileName"], params["MessageType"], params["MediaContentType0"]) == ("Grace", "document", "application/pdf")
    fetched = requests.get(params["MediaUrl0"], auth=(world.account.sid, world.account.auth_token), timeout=HTTP_TIMEOUT)
    assert fetched.content == b"%PDF-1.4 hi"

    bad = requests.post(
        world.sandbox.url + "/_sandbox/inbound",
        json={"to": WA_SENDER, "media_files": [{"content_base64": "***", "content_type": "image/png"}]},
        timeout=HTTP_TIMEOUT,
    )
    assert bad.status_code == 400 and "media_files" in bad.json()["error"]


# --------------------------------------------------------------------------------------
# Outbound
# --------------------------------------------------------------------------------------


def test_outbound_inside_the_window_is_sent_then_delivered_with_signed_callbacks(world):
    world.sandbox.send_inbound(from_=WA_USER, to=WA_SENDER, body="hi")
    message = world.send(from_=WA_SENDER, to=WA_USER, body="hello back", status_callback=world.app.url("/status"))
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.num_segments, message.num_media) == ("queued", "1", "0")
    assert (message.from_, message.to) == (WA_SENDER, WA_USER)

    settled = world.sandbox.wait_for_status(message.sid, "delivered", timeout=5)
    assert (settled["channel"], settled["status"], settled["error_code"]) == ("whatsapp", "delivered", None)
    assert settled["statuses"] == ["queued", "sent", "delivered"]
    sent, delivered = world.sandbox.wait_for_callbacks(2, message_sid=message.sid, timeout=5)
    received = world.app.received("POST", "/status")
    assert [r["params"]["MessageStatus"] for r in received] == ["sent", "delivered"]
    for callback, req, status in ((sent, received[0], "sent"), (delivered, received[1], "delivered")):
        params = req["params"]
        assert set(params) == CALLBACK_FIELDS and params == callback["form"]
        assert (params["MessageStatus"], params["SmsStatus"], params["ChannelPrefix"]) == (status, status, "whatsapp")
        assert (params["MessageSid"], params["SmsSid"], params["AccountSid"]) == (message.sid, message.sid, world.account.sid)
        assert (params["From"], params["To"], params["ChannelToAddress"]) == (WA_SENDER, WA_USER, "+1555123XXXX")
        assert re.fullmatch(r"XE[0-9a-f]{32}", params["ChannelInstallSid"])
        assert world.validator().validate(req["url"], params, req["headers"]["X-Twilio-Signature"])
        assert (callback["status"], callback["error"]) == (200, None)
    assert [m["sid"] for m in world.sandbox.wait_for_messages(1, to=WA_USER, timeout=1)] == [message.sid]


def test_outbound_outside_the_window_is_accepted_then_fails_63016(world):
    message = world.send(from_=WA_SENDER, to=WA_USER, body="hello?", status_callback=world.app.url("/status"))
    assert message.status == "queued"  # 201: the refusal comes later
    failed = world.sandbox.wait_for_status(message.sid, "failed", timeout=5)
    assert (failed["error_code"], failed["window_open"]) == (63016, False)
    assert failed["error_message"] == "Outside messaging window. For WhatsApp, use a Message Template instead"
    (callback,) = world.sandbox.wait_for_callbacks(1, message_sid=message.sid, timeout=5)
    (req,) = world.app.received("POST", "/status")
    params = req["params"]
    assert set(params) == CALLBACK_FIELDS | {"ErrorCode", "ErrorMessage"}
    assert (params["MessageStatus"], params["ErrorCode"]) == ("failed", "63016")
    assert params["ErrorMessage"] == failed["error_message"]
    assert world.validator().validate(req["url"], params, req["headers"]["X-Twilio-Signature"])
    with pytest.raises(SandboxError, match="never was delivered"):
        world.sandbox.wait_for_status(message.sid, "delivered", timeout=5)

    # The window follows the user's messages, and the test's hand.
    world.sandbox.send_inbound(from_=WA_USER, to=WA_SENDER, body="here I am")
    world.sandbox.close_window(WA_USER, SENDER)
    closed = world.send(from_=WA_SENDER, to=WA_USER, body="x")
    assert world.sandbox.wait_for_status(closed.sid, "failed", timeout=5)["error_code"] == 63016
    world.sandbox.open_window(USER, WA_SENDER)
    assert world.sandbox.wait_for_status(world.send(from_=WA_SENDER, to=WA_USER, body="x").sid, "delivered", timeout=5)
    # A window is per (user, sender).
    other_user = world.send(from_=WA_SENDER, to="whatsapp:+15551230002", body="x")
    assert world.sandbox.wait_for_status(other_user.sid, "failed", timeout=5)["error_code"] == 63016
    # A Content API template goes outside the window.
    template = world.send(from_=WA_SENDER, to="whatsapp:+15551230002", content_sid="HX" + "b" * 32)
    settled = world.sandbox.wait_for_status(template.sid, "delivered", timeout=5)
    assert settled["template"] is True


def test_outbound_media_is_fetched_from_the_app_and_only_the_first_delivered(world):
    world.sandbox.open_window(USER, SENDER)
    first = world.app.serve("/media/cat.png", PNG, "image/png")
    second = world.app.serve("/media/dog.png", b"second", "image/png")
    message = world.send(from_=WA_SENDER, to=WA_USER, body="two pictures", media_url=[first, second])
    assert re.fullmatch(r"MM[0-9a-f]{32}", message.sid) and message.num_media == "2"
    settled = world.sandbox.wait_for_status(message.sid, "delivered", timeout=5)
    assert settled["media_fetched"] == [
        {"url": first, "status": 200, "content_type": "image/png", "size": len(PNG),
         "sha256": hashlib.sha256(PNG).hexdigest(), "error": None},
        {"url": second, "status": 200, "content_type": "image/png", "size": 6,
         "sha256": hashlib.sha256(b"second").hexdigest(), "error": None},
    ]
    assert (settled["media_delivered"], settled["media_ignored"]) == (first, [second])
    gets = world.app.received("GET", "/media/")
    assert [g["path"] for g in gets] == ["/media/cat.png", "/media/dog.png"]
    assert all("Authorization" not in g["headers"] for g in gets)


def test_outbound_media_that_cannot_be_downloaded_fails_63019(world):
    world.sandbox.open_window(USER, SENDER)
    unreachable = f"http://127.0.0.1:{_closed_port()}/gone.png"
    missing = world.app.url("/media/missing.png")
    moved = world.app.serve("/media/moved.png", b"", None, status=302, Location="http://127.0.0.1:9/elsewhere.png")
    internet = "https://example.com/cat.png"
    for url in (unreachable, missing, moved, internet):
        message = world.send(from_=WA_SENDER, to=WA_USER, media_url=[url], status_callback=world.app.url("/status"))
        failed = world.sandbox.wait_for_status(message.sid, "failed", timeout=5)
        assert (failed["error_code"], failed["error_message"]) == (63019, "Media failed to download"), url
        (callback,) = world.sandbox.wait_for_callbacks(1, message_sid=message.sid, timeout=5)
        assert callback["form"]["ErrorCode"] == "63019"
        (fetched,) = failed["media_fetched"]
        if url == unreachable:
            assert fetched["status"] is None and fetched["error"]
        elif url == missing:
            assert fetched["status"] == 404
        elif url == moved:  # not followed
            assert (fetched["status"], fetched["location"]) == (302, "http://127.0.0.1:9/elsewhere.png")
        else:  # never reaches the internet
            assert fetched["status"] is None and "loopback" in fetched["error"]
    assert [r["path"] for r in world.app.received("GET", "/media/")] == ["/media/missing.png", "/media/moved.png"]


@pytest.mark.parametrize(
    "content_type, size, code",
    [
        ("text/html", 100, 63021),
        ("image/gif", 100, 63021),
        (None, 100, 63021),
        ("image/jpeg", 5 * 1024 * 1024 + 1, 11751),
        ("application/pdf", 5 * 1024 * 1024 + 1, None),
        ("audio/ogg; codecs=opus", 100, None),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", 100, None),
        ("video/mp4", 16 * 1024 * 1024 + 1, 11751),
    ],
)
def test_outbound_media_type_and_size(world, content_type, size, code):
    world.sandbox.open_window(USER, SENDER)
    url = world.app.serve("/media/file", b"\0" * size, content_type)
    message = world.send(from_=WA_SENDER, to=WA_USER, media_url=[url])
    settled = world.sandbox.wait_for_status(message.sid, "failed" if code else "delivered", timeout=8)
    assert settled["error_code"] == code
    assert settled["media_fetched"][0]["size"] == size


def test_twilio_fetches_outbound_media_as_served(world):
    """Twilio goes by the Content-Type it is served, and sends no credentials."""
    world.sandbox.open_window(USER, SENDER)
    auth = (world.account.sid, world.account.auth_token)
    hosted = world.sandbox.add_media(world.account.sid, "MM" + "c" * 32, PNG, "image/png", served_type="text/html")
    cdn = requests.get(hosted, auth=auth, allow_redirects=False, timeout=HTTP_TIMEOUT).headers["Location"]
    lying = world.send(from_=WA_SENDER, to=WA_USER, media_url=[cdn])
    failed = world.sandbox.wait_for_status(lying.sid, "failed", timeout=5)
    assert failed["error_code"] == 63021 and failed["media_fetched"][0]["content_type"] == "text/html"
    assert failed["media_fetched"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()
    # An inbound media URL handed back as it is: Twilio's fetch has no auth, and follows no redirect.
    forwarded = world.send(from_=WA_SENDER, to=WA_USER, media_url=[hosted])
    failed = world.sandbox.wait_for_status(forwarded.sid, "failed", timeout=5)
    assert failed["error_code"] == 63019 and failed["media_fetched"][0]["status"] == 401


VALIDATION_CASES = [
    ("from-sms-only", dict(from_="whatsapp:" + SMS_ONLY, to=WA_USER, body="x"), 63007,
     "Twilio could not find a Channel with the specified From address"),
    ("from-other-account", dict(from_="whatsapp:+15005550021", to=WA_USER, body="x"), 63007,
     "Twilio could not find a Channel with the specified From address"),
    ("from-unknown", dict(from_="whatsapp:+15559990000", to=WA_USER, body="x"), 63007,
     "Twilio could not find a Channel with the specified From address"),
    ("from-without-prefix", dict(from_=SENDER, to=WA_USER, body="x"), 63007,
     "Twilio could not find a Channel with the specified From address"),
    ("to-without-prefix", dict(from_=WA_SENDER, to=USER, body="x"), 21211, f"Invalid 'To' Phone Number: {USER}"),
    ("to-not-e164", dict(from_=WA_SENDER, to="whatsapp:5551230001", body="x"), 21211,
     "Invalid 'To' Phone Number: whatsapp:5551230001"),
    ("nothing-to-send", dict(from_=WA_SENDER, to=WA_USER), 21602, "Message body is required."),
    ("body-too-long", dict(from_=WA_SENDER, to=WA_USER, body="a" * 1601), 21617,
     "The concatenated message body exceeds the 1600 character limit."),
    ("eleven-media", dict(from_=WA_SENDER, to=WA_USER, media_url=[f"http://127.0.0.1:9/{i}.png" for i in range(11)]),
     21623, "The number of media files associated with the message exceeds the limit of 10."),
]


@pytest.mark.parametrize("case, kwargs, code, message", VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_outbound_validation_errors(world, case, kwargs, code, message):
    world.sandbox.open_window(USER, SENDER)
    with pytest.raises(TwilioRestException) as raised:
        world.client.messages.create(**kwargs)
    assert (raised.value.status, raised.value.code) == (400, code)
    assert world.responses[-1].json() == {
        "code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": 400,
    }
    assert world.sandbox.messages() == [] and world.sandbox.callbacks() == []


def test_body_of_1600_and_ten_media_are_accepted(world):
    world.sandbox.open_window(USER, SENDER)
    assert world.send(from_=WA_SENDER, to=WA_USER, body="a" * 1600).num_segments == "1"
    ten = world.post_message(From=WA_SENDER, To=WA_USER, MediaUrl=[world.app.serve(f"/m{i}", PNG, "image/png") for i in range(10)])
    assert ten.status_code == 201 and ten.json()["num_media"] == "10"
    assert len(world.sandbox.wait_for_status(ten.json()["sid"], "delivered", timeout=5)["media_fetched"]) == 10


def test_sms_messages_keep_their_behaviour(world):
    message = world.send(from_=SMS_ONLY, to=USER, body="plain sms", status_callback=world.app.url("/status"))
    record = world.sandbox.message(message.sid)
    assert (record["channel"], record["status"], record["statuses"]) == ("sms", "queued", ["queued"])
    with pytest.raises(TimeoutError, match="it is queued"):
        world.sandbox.wait_for_status(message.sid, "delivered", timeout=0.3)
    assert world.sandbox.callbacks() == [] and world.app.received("POST", "/status") == []
    with pytest.raises(SandboxError, match="no outbound message"):
        world.sandbox.wait_for_status("SM" + "0" * 32, "sent", timeout=0.3)


def test_callbacks_never_leave_loopback_and_failures_are_recorded(world):
    world.sandbox.open_window(USER, SENDER)
    message = world.send(from_=WA_SENDER, to=WA_USER, body="x", status_callback="https://bot.example.com/status")
    world.sandbox.wait_for_status(message.sid, "delivered", timeout=5)
    sent, delivered = world.sandbox.wait_for_callbacks(2, message_sid=message.sid, timeout=5)
    assert sent["status"] is None and "loopback" in sent["error"] and sent["form"]["MessageStatus"] == "sent"
    closed = f"http://127.0.0.1:{_closed_port()}/status"
    message = world.send(from_=WA_SENDER, to=WA_USER, body="x", status_callback=closed)
    world.sandbox.wait_for_status(message.sid, "delivered", timeout=5)
    first, _ = world.sandbox.wait_for_callbacks(2, message_sid=message.sid, timeout=5)
    assert first["status"] is None and "could not deliver the status callback" in first["error"]


def test_slow_callbacks_are_bounded(world, monkeypatch):
    monkeypatch.setattr(sandbox_server, "CALLBACK_TIMEOUT", 0.3)
    world.sandbox.open_window(USER, SENDER)
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/status"
        started = time.monotonic()
        message = world.send(from_=WA_SENDER, to=WA_USER, body="x", status_callback=url)
        first, second = world.sandbox.wait_for_callbacks(2, message_sid=message.sid, timeout=5)
        assert time.monotonic() - started < 3
        assert "did not answer within 0.3s" in first["error"] and "did not answer" in second["error"]
    finally:
        hang.close()


def test_secrets_stay_out_of_records_and_logs(world, caplog):
    caplog.set_level(logging.DEBUG, logger="sophon_sms_twilio.sandbox")
    world.sandbox.send_inbound(from_=WA_USER, to=WA_SENDER, body="hi", media_files=[(PNG, "image/png")])
    media_url = world.app.received("POST", "/whatsapp")[0]["params"]["MediaUrl0"]
    requests.get(media_url, auth=(world.account.sid, world.account.auth_token), timeout=HTTP_TIMEOUT)
    message = world.send(from_=WA_SENDER, to=WA_USER, body="x", status_callback=world.app.url("/status"))
    world.sandbox.wait_for_callbacks(2, message_sid=message.sid, timeout=5)
    bad = world.send(from_=WA_SENDER, to=WA_USER, body="x", status_callback="https://bot.example.com/s")
    world.sandbox.wait_for_callbacks(2, message_sid=bad.sid, timeout=5)
    dumped = json.dumps(
        [world.sandbox.requests(), world.sandbox.messages(), world.sandbox.inbound(), world.sandbox.callbacks()]
    ) + caplog.text + requests.get(world.sandbox.url + "/_sandbox/info", timeout=HTTP_TIMEOUT).text
    assert "loopback" in caplog.text  # the log did see the refused callback
    for secret in (world.account.auth_token, world.other.auth_token):
        assert secret not in dumped, "an auth token was recorded or logged"


# --------------------------------------------------------------------------------------
# Demo and CLI
# --------------------------------------------------------------------------------------


def test_demo_sandbox_has_a_whatsapp_sender():
    with App() as app:
        sandbox = demo_sandbox(sms_url=app.url("/sms"), whatsapp_url=app.url("/whatsapp"))
        try:
            assert DEMO_WHATSAPP_NUMBER == "+15005550020"
            assert sandbox.send_inbound(from_=WA_USER, to="whatsapp:" + DEMO_WHATSAPP_NUMBER, body="hi")[0] == 200
            client = sandbox.twilio_client(DEMO_ACCOUNT_SID, http_client=TwilioHttpClient(timeout=HTTP_TIMEOUT))
            sent = client.messages.create(from_="whatsapp:" + DEMO_WHATSAPP_NUMBER, to=WA_USER, body="hello")
            assert sandbox.wait_for_status(sent.sid, "delivered", timeout=5)["status"] == "delivered"
        finally:
            sandbox.stop()
    (req,) = app.received("POST", "/whatsapp")
    assert RequestValidator(DEMO_AUTH_TOKEN).validate(req["url"], req["params"], req["headers"]["X-Twilio-Signature"])


def test_main_takes_a_whatsapp_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "sophon_sms_twilio.sandbox", "--port", "0", "--whatsapp-url", "http://127.0.0.1:9/wa"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        banner = "".join(lines)
        base = re.search(r"listening on (http://127\.0\.0\.1:\d+)", banner).group(1)
        info = requests.get(base + "/_sandbox/info", timeout=HTTP_TIMEOUT).json()
        assert info["whatsapp_senders"] == [
            {"address": "whatsapp:" + DEMO_WHATSAPP_NUMBER, "account_sid": DEMO_ACCOUNT_SID, "sms_url": "http://127.0.0.1:9/wa"}
        ]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert "whatsapp:+15005550020 -> http://127.0.0.1:9/wa" in banner
    assert DEMO_AUTH_TOKEN not in banner + rest
