"""The Twilio sandbox, checked against Twilio's own contract and Twilio's own SDK.

Everything here is real HTTP on 127.0.0.1: the official ``twilio`` SDK talks to the
sandbox, the sandbox's "phone" posts signed webhooks to small receiving servers started by
the tests. Every REST response any test receives is validated, when the test ends, against
the vendored OpenAPI document (tests/contract/twilio_api_v2010.json), and every form field
POSTed to Messages.json must be a property of that document's request schema.

Auth tokens are secrets even here: no assertion compares them in a way that would print
them (``hmac.compare_digest`` into a bool), and schema errors redact ``auth_token``.
"""

from __future__ import annotations

import base64
import faulthandler
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from openapi_schema_validator import OAS30Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from sophon_sms_twilio.sandbox import (
    DEMO_ACCOUNT_SID,
    DEMO_AUTH_TOKEN,
    DEMO_NUMBER,
    DEMO_PEER,
    Sandbox,
    SandboxError,
    count_segments,
    demo_sandbox,
)
from sophon_sms_twilio.sandbox import server as sandbox_server

HTTP_TIMEOUT = 5  # seconds, for every client call a test makes
PER_TEST_LIMIT = 60  # seconds; a hung test dumps its stacks and ends the run

# --------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------

CONTRACT_DIR = Path(__file__).parent / "contract"
DOC = json.loads((CONTRACT_DIR / "twilio_api_v2010.json").read_text(encoding="utf-8"))
DOC_URI = "urn:twilio-oai:twilio_api_v2010"
REGISTRY = Registry().with_resource(DOC_URI, DRAFT4.create_resource(DOC))

ACCOUNT_PATH = "/2010-04-01/Accounts/{Sid}.json"
NUMBERS_PATH = "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json"
MESSAGES_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
_CONCRETE = [
    (re.compile(r"^/2010-04-01/Accounts/[^/]+\.json$"), ACCOUNT_PATH),
    (re.compile(r"^/2010-04-01/Accounts/[^/]+/IncomingPhoneNumbers\.json$"), NUMBERS_PATH),
    (re.compile(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"), MESSAGES_PATH),
]

# Twilio's error body. The OpenAPI document describes no error responses for these
# operations (checked in test_contract_has_no_error_schemas), so this is the contract.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "more_info", "status"],
    "additionalProperties": False,
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "more_info": {"type": "string"},
        "status": {"type": "integer"},
    },
}

MESSAGE_REQUEST_FIELDS = frozenset(
    DOC["paths"][MESSAGES_PATH]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"][
        "properties"
    ]
)

RFC2822_UTC = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d{2}:\d{2}:\d{2} \+0000$"
)


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = DOC
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def response_schema(path: str | None, method: str, status: int) -> dict:
    """The vendored document's schema for that response, or Twilio's error body schema.

    ``path`` is an OpenAPI path template, or None for a path the document lacks."""
    responses = DOC["paths"].get(path, {}).get(method, {}).get("responses", {})
    if str(status) in responses:
        return {
            "$ref": DOC_URI
            + _pointer("paths", path, method, "responses", str(status), "content", "application/json", "schema")
        }
    assert status >= 400, f"the contract has no {status} response for {method.upper()} {path or 'that path'}"
    return ERROR_SCHEMA


def component_properties(name: str) -> set[str]:
    return set(DOC["components"]["schemas"][name]["properties"])


def _redacted(instance: Any) -> Any:
    if isinstance(instance, dict):
        return {
            k: ("<auth_token: str>" if k == "auth_token" and isinstance(v, str) else _redacted(v))
            for k, v in instance.items()
        }
    if isinstance(instance, list):
        return [_redacted(v) for v in instance]
    return instance


def contract_errors(path: str | None, method: str, status: int, body: Any) -> list[str]:
    """Why ``body`` breaks the contract (empty when it honours it).

    Beyond the OpenAPI schema (which lists no required fields), a resource must carry
    exactly the schema's properties: Twilio returns them all, and nothing else.
    """
    schema = response_schema(path, method, status)
    validator = OAS30Validator(schema, registry=REGISTRY)
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(_redacted(body))
    ]
    if schema is ERROR_SCHEMA or not isinstance(body, dict):
        return problems

    def same_keys(where: str, instance: dict, expected: set[str]) -> None:
        missing, extra = expected - set(instance), set(instance) - expected
        if missing or extra:
            problems.append(f"{where}: missing {sorted(missing)}, unexpected {sorted(extra)}")

    resolved = _resolve(DOC["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"])
    same_keys("<root>", body, set(resolved["properties"]))
    for key, prop in resolved["properties"].items():
        if prop.get("type") == "array" and isinstance(body.get(key), list):
            item_props = set(_resolve(prop["items"])["properties"])
            for i, item in enumerate(body[key]):
                same_keys(f"{key}/{i}", item, item_props)
    return problems


def assert_rfc2822_recent(value: str) -> None:
    assert RFC2822_UTC.match(value), value
    assert abs(time.time() - parsedate_to_datetime(value).timestamp()) < 120, value


def unknown_message_fields(sandbox: Sandbox) -> set[str]:
    """Form fields POSTed to Messages.json that Twilio's request schema does not define."""
    posted: set[str] = set()
    for record in sandbox.requests():
        if record["method"] == "POST" and record["path"].endswith("/Messages.json"):
            posted |= set(record["form_multi"])
    return posted - MESSAGE_REQUEST_FIELDS


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _bounded_in_time():
    """A test that hangs dumps every thread's stack and stops the run instead of waiting."""
    faulthandler.dump_traceback_later(PER_TEST_LIMIT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@dataclass
class World:
    sandbox: Sandbox
    full: Any  # Account
    trial: Any  # Account
    full_number: Any
    trial_number: Any
    responses: list = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)

    def capture(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses.append(response)

    def client(self, account_sid: str | None = None, auth_token: str | None = None, timeout: float = HTTP_TIMEOUT) -> Client:
        """The official SDK, pointed at the sandbox through the ``api`` domain's base_url."""
        account_sid = account_sid or self.full.sid
        if auth_token is None:
            auth_token = self.full.auth_token if account_sid == self.full.sid else self.trial.auth_token
        http_client = TwilioHttpClient(timeout=timeout, request_hooks={"response": [self.capture]})
        client = Client(account_sid, auth_token, http_client=http_client)
        client.api.base_url = self.sandbox.url
        return client

    def rest(self, method: str, path: str, *, auth: Any = "full", **kwargs: Any) -> requests.Response:
        if auth == "full":
            auth = (self.full.sid, self.full.auth_token)
        elif auth == "trial":
            auth = (self.trial.sid, self.trial.auth_token)
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.request(method, self.sandbox.url + path, auth=auth, **kwargs)

    def post_message(self, account: str = "full", **form: Any) -> requests.Response:
        sid = self.full.sid if account == "full" else self.trial.sid
        return self.rest("POST", f"/2010-04-01/Accounts/{sid}/Messages.json", auth=account, data=form)


@pytest.fixture
def world():
    with Sandbox() as sandbox:
        full = sandbox.add_account(type="Full", friendly_name="Full account")
        trial = sandbox.add_account(type="Trial", friendly_name="Trial account")
        full_number = sandbox.add_number(full.sid, "+15005550006", sms_url="http://127.0.0.1:9/unused")
        trial_number = sandbox.add_number(trial.sid, "+15005550007")
        w = World(sandbox, full, trial, full_number, trial_number)
        w.session.hooks["response"].append(w.capture)
        yield w
        w.session.close()
        # Every response any test received from the three endpoints honours the contract...
        broken = []
        for response in w.responses:
            path = urllib.parse.urlsplit(response.url).path
            template = next((t for rx, t in _CONCRETE if rx.match(path)), None)
            method = response.request.method.lower()
            if response.status_code < 400 and method not in DOC["paths"].get(template, {}):
                problems = ["a success the contract does not describe"]
            else:
                problems = contract_errors(template, method, response.status_code, response.json())
            if problems:
                broken.append(f"{response.request.method} {path} -> {response.status_code}: {problems}")
        assert not broken, "\n".join(broken)
        # ... and every field POSTed to Messages.json is one Twilio's request schema defines.
        assert not unknown_message_fields(sandbox)


class Receiver:
    """A tiny web app standing in for Sophon's webhook: records requests, answers TwiML."""

    def __init__(self, respond: Callable[["Receiver", dict], tuple[int, str]] | None = None):
        self.requests: list[dict] = []
        self.respond = respond or (lambda receiver, req: (200, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"))
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8") if length else ""
                req = {
                    "method": self.command,
                    "url": f"http://127.0.0.1:{receiver.port}{self.path}",
                    "headers": dict(self.headers.items()),
                    "raw": raw,
                    "params": dict(urllib.parse.parse_qsl(raw, keep_blank_values=True)),
                }
                receiver.requests.append(req)
                status, text = receiver.respond(receiver, req)
                data = text.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except ConnectionError:  # the phone gave up waiting (the timeout test)
                    pass

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str = "/api/channels/sms/webhook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def reference_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's documented algorithm, written out independently of the SDK: HMAC-SHA1,
    keyed with the auth token, over the full URL followed by each POST parameter's name
    and value in parameter-name order; base64."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# --------------------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------------------


def test_vendored_contract_is_twilios_document():
    assert DOC["openapi"] == "3.0.1"
    assert DOC["servers"] == [{"url": "https://api.twilio.com"}]
    assert "get" in DOC["paths"][ACCOUNT_PATH]
    assert "get" in DOC["paths"][NUMBERS_PATH]
    assert "post" in DOC["paths"][MESSAGES_PATH]
    license_text = (CONTRACT_DIR / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "Twilio" in license_text
    readme = (CONTRACT_DIR / "README.md").read_text(encoding="utf-8")
    assert "d50069b44ea8cd23141385bdb6db48f16ff75bb5" in readme and "MIT" in readme


def test_contract_has_no_error_schemas():
    # Were Twilio to describe its error bodies, response_schema() would use them instead.
    for path, method in ((ACCOUNT_PATH, "get"), (NUMBERS_PATH, "get"), (MESSAGES_PATH, "post")):
        assert all(int(status) < 400 for status in DOC["paths"][path][method]["responses"]), (path, method)


def test_contract_checks_can_fail(world):
    good = world.post_message(To="+15551230001", From="+15005550006", Body="hi").json()
    assert contract_errors(MESSAGES_PATH, "post", 201, good) == []
    assert contract_errors(MESSAGES_PATH, "post", 201, {**good, "num_segments": 1})  # a string in Twilio's API
    assert contract_errors(MESSAGES_PATH, "post", 201, {**good, "status": "posted"})  # not in the enum
    assert contract_errors(MESSAGES_PATH, "post", 201, {k: v for k, v in good.items() if k != "uri"})
    assert contract_errors(MESSAGES_PATH, "post", 201, {**good, "segments": "1"})
    assert contract_errors(MESSAGES_PATH, "post", 400, {"code": 21602, "message": "x", "more_info": "y"})
    assert contract_errors(MESSAGES_PATH, "post", 400, {"code": "21602", "message": "x", "more_info": "y", "status": 400})
    numbers = world.rest("GET", f"/2010-04-01/Accounts/{world.full.sid}/IncomingPhoneNumbers.json").json()
    assert contract_errors(NUMBERS_PATH, "get", 200, numbers) == []
    item = numbers["incoming_phone_numbers"][0]
    broken = {**numbers, "incoming_phone_numbers": [{**item, "capabilities": {**item["capabilities"], "sms": "yes"}}]}
    assert contract_errors(NUMBERS_PATH, "get", 200, broken)
    missing = {**numbers, "incoming_phone_numbers": [{k: v for k, v in item.items() if k != "sms_url"}]}
    assert contract_errors(NUMBERS_PATH, "get", 200, missing)


def test_account_resource_honours_contract(world):
    response = world.rest("GET", f"/2010-04-01/Accounts/{world.trial.sid}.json", auth="trial")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert contract_errors(ACCOUNT_PATH, "get", 200, body) == []
    assert body["sid"] == body["owner_account_sid"] == world.trial.sid
    assert (body["type"], body["status"], body["friendly_name"]) == ("Trial", "active", "Trial account")
    assert body["uri"] == f"/2010-04-01/Accounts/{world.trial.sid}.json"
    assert body["subresource_uris"]["messages"] == f"/2010-04-01/Accounts/{world.trial.sid}/Messages.json"
    assert body["subresource_uris"]["incoming_phone_numbers"].endswith(f"{world.trial.sid}/IncomingPhoneNumbers.json")
    assert_rfc2822_recent(body["date_created"])
    assert_rfc2822_recent(body["date_updated"])
    assert same_secret(body["auth_token"], world.trial.auth_token)  # Twilio returns it too


def test_incoming_numbers_page_honours_contract(world):
    world.sandbox.add_number(world.full.sid, "+15005550008", sms=False, mms=True, voice=False)
    path = f"/2010-04-01/Accounts/{world.full.sid}/IncomingPhoneNumbers.json"
    response = world.rest("GET", path + "?PhoneNumber=%2B15005550006")
    assert response.status_code == 200
    page = response.json()
    assert contract_errors(NUMBERS_PATH, "get", 200, page) == []
    assert [n["phone_number"] for n in page["incoming_phone_numbers"]] == ["+15005550006"]
    number = page["incoming_phone_numbers"][0]
    assert re.fullmatch(r"PN[0-9a-f]{32}", number["sid"])
    assert number["sid"] == world.full_number.sid
    assert number["friendly_name"] == "(500) 555-0006"
    assert number["capabilities"] == {"voice": True, "sms": True, "mms": False, "fax": False}
    assert (number["sms_url"], number["sms_method"], number["status"]) == ("http://127.0.0.1:9/unused", "POST", "in-use")
    assert number["account_sid"] == world.full.sid and number["api_version"] == "2010-04-01"
    assert number["uri"] == f"/2010-04-01/Accounts/{world.full.sid}/IncomingPhoneNumbers/{number['sid']}.json"
    assert_rfc2822_recent(number["date_created"])
    assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 50, 0, 0)
    assert page["uri"] == f"{path}?PhoneNumber=%2B15005550006&PageSize=50&Page=0"
    assert page["first_page_uri"] == page["uri"]
    assert page["next_page_uri"] is None and page["previous_page_uri"] is None

    everything = world.rest("GET", path).json()
    assert [n["phone_number"] for n in everything["incoming_phone_numbers"]] == ["+15005550006", "+15005550008"]
    assert everything["incoming_phone_numbers"][1]["capabilities"] == {"voice": False, "sms": False, "mms": True, "fax": False}
    none = world.rest("GET", path + "?PhoneNumber=%2B15005550007").json()  # the Trial account's number
    assert none["incoming_phone_numbers"] == [] and none["end"] == 0


def test_message_resource_honours_contract(world):
    response = world.post_message(To="+15551230001", From="+15005550006", Body="Hello from Sophon")
    assert response.status_code == 201
    body = response.json()
    assert contract_errors(MESSAGES_PATH, "post", 201, body) == []
    assert re.fullmatch(r"SM[0-9a-f]{32}", body["sid"])
    assert (body["status"], body["direction"], body["api_version"]) == ("queued", "outbound-api", "2010-04-01")
    assert (body["to"], body["from"], body["body"]) == ("+15551230001", "+15005550006", "Hello from Sophon")
    assert (body["num_segments"], body["num_media"]) == ("1", "0")
    assert body["account_sid"] == world.full.sid
    assert body["price"] is None and body["error_code"] is None and body["error_message"] is None
    assert body["messaging_service_sid"] is None
    assert body["uri"] == f"/2010-04-01/Accounts/{world.full.sid}/Messages/{body['sid']}.json"
    assert body["subresource_uris"] == {"media": f"/2010-04-01/Accounts/{world.full.sid}/Messages/{body['sid']}/Media.json"}
    assert_rfc2822_recent(body["date_created"])
    assert_rfc2822_recent(body["date_updated"])

    (recorded,) = world.sandbox.messages()
    assert recorded["sid"] == body["sid"] and recorded["response"] == body
    assert recorded["account_sid"] == recorded["auth_user"] == world.full.sid
    assert recorded["form"] == {"To": "+15551230001", "From": "+15005550006", "Body": "Hello from Sophon"}
    assert recorded["form_multi"] == {"To": ["+15551230001"], "From": ["+15005550006"], "Body": ["Hello from Sophon"]}
    assert abs(recorded["received_at"] - time.time()) < 60


def test_message_with_media_and_service(world):
    response = world.rest(
        "POST",
        f"/2010-04-01/Accounts/{world.full.sid}/Messages.json",
        data=[
            ("To", "+15551230001"),
            ("MessagingServiceSid", "MG" + "0" * 32),
            ("MediaUrl", "https://example.com/a.png"),
            ("MediaUrl", "https://example.com/b.png"),
            ("StatusCallback", "https://example.com/status"),
        ],
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["num_media"], body["num_segments"], body["body"], body["from"]) == ("2", "1", "", None)
    assert body["messaging_service_sid"] == "MG" + "0" * 32
    (recorded,) = world.sandbox.messages()
    assert recorded["form_multi"]["MediaUrl"] == ["https://example.com/a.png", "https://example.com/b.png"]
    assert recorded["form"]["MediaUrl"] == "https://example.com/b.png"  # repeated keys: last wins
    assert world.post_message(To="+15551230001", MessagingServiceSid="MG123", Body="x").json()["code"] == 21705


def test_a_misspelled_field_is_caught():
    with Sandbox() as sandbox:
        account = sandbox.add_account()
        sandbox.add_number(account.sid, "+15005550006")
        response = requests.post(
            f"{sandbox.url}/2010-04-01/Accounts/{account.sid}/Messages.json",
            auth=(account.sid, account.auth_token),
            data={"To": "+15551230001", "From": "+15005550006", "Body": "x", "Bodyy": "typo", "StatusCallBack": "u"},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 201  # Twilio ignores unknown parameters; the contract check does not
        assert unknown_message_fields(sandbox) == {"Bodyy", "StatusCallBack"}


# --------------------------------------------------------------------------------------
# The SDK against the sandbox
# --------------------------------------------------------------------------------------


def test_sdk_fetches_accounts(world):
    full = world.client().api.v2010.accounts(world.full.sid).fetch()
    assert (full.sid, full.type, full.status) == (world.full.sid, "Full", "active")
    trial = world.client(world.trial.sid).api.v2010.account.fetch()
    assert (trial.sid, trial.type, trial.friendly_name) == (world.trial.sid, "Trial", "Trial account")
    suspended = world.sandbox.add_account(type="Full", status="suspended")
    fetched = world.client(suspended.sid, suspended.auth_token).api.v2010.account.fetch()
    assert fetched.status == "suspended"


def test_sdk_lists_incoming_numbers(world):
    world.sandbox.add_number(world.full.sid, "+15551110000", mms=True)
    client = world.client()
    (only,) = client.incoming_phone_numbers.list(phone_number="+15005550006")
    assert (only.sid, only.phone_number, only.sms_url) == (world.full_number.sid, "+15005550006", "http://127.0.0.1:9/unused")
    assert only.capabilities["sms"] is True
    assert client.incoming_phone_numbers.list(phone_number="+15005550007") == []  # another account's
    # page_size=1 makes the SDK follow next_page_uri, which must lead back to the sandbox.
    assert [n.phone_number for n in client.incoming_phone_numbers.list(page_size=1)] == ["+15005550006", "+15551110000"]


def test_sdk_creates_messages(world):
    client = world.client()
    message = client.messages.create(to="+15551230001", from_="+15005550006", body="hello")
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.num_segments, message.direction) == ("queued", "1", "outbound-api")
    assert (message.to, message.from_, message.body) == ("+15551230001", "+15005550006", "hello")
    second = client.messages.create(to="+15551230002", from_="+15005550006", body="a" * 161)
    assert second.num_segments == "2" and second.sid != message.sid
    assert [m["sid"] for m in world.sandbox.messages()] == [message.sid, second.sid]
    assert [m["index"] for m in world.sandbox.messages()] == [1, 2]
    assert [m["sid"] for m in world.sandbox.messages(to="+15551230002")] == [second.sid]
    assert [m["sid"] for m in world.sandbox.wait_for_messages(2, timeout=1)] == [message.sid, second.sid]


def test_sandbox_twilio_client_helper(world, monkeypatch):
    # TWILIO_REGION / TWILIO_EDGE would make the SDK rewrite the sandbox's host name.
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    client = world.sandbox.twilio_client(world.trial.sid)
    assert client.api.v2010.account.fetch().type == "Trial"
    assert world.sandbox.twilio_client().api.v2010.account.fetch().sid == world.full.sid  # the first account


@pytest.mark.parametrize(
    "body, segments",
    [
        ("hello", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters cost two septets
        ("€" * 81, 2),
        ("[" * 80, 1),
        ("a" * 152 + "€" + "a" * 152, 3),  # 306 septets, but the € may not straddle two parts
        ("é" * 160, 1),  # é is in the GSM-7 basic set
        ("ж" * 70, 1),  # anything else: UCS-2
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("👍" * 35, 1),  # two UTF-16 units each
        ("👍" * 36, 2),
        ("a" * 159 + "ç", 3),  # one non-GSM character turns the whole body into UCS-2
    ],
)
def test_num_segments(world, body, segments):
    assert count_segments(body) == segments
    message = world.client().messages.create(to="+15551230001", from_="+15005550006", body=body)
    assert message.num_segments == str(segments)


def test_sdk_wrong_credentials_are_401(world):
    with pytest.raises(TwilioRestException) as wrong_token:
        world.client(world.full.sid, "0" * 32).api.v2010.account.fetch()
    assert (wrong_token.value.status, wrong_token.value.code) == (401, 20003)
    unauthorized = world.responses[-1]
    assert unauthorized.headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'
    assert unauthorized.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    # Right credentials, but another account's URL.
    with pytest.raises(TwilioRestException) as other_account:
        world.client().api.v2010.accounts(world.trial.sid).fetch()
    assert (other_account.value.status, other_account.value.code) == (401, 20003)
    with pytest.raises(TwilioRestException) as unknown_account:
        world.client("AC" + "f" * 32, "0" * 32).messages.create(to="+15551230001", from_="+15005550006", body="x")
    assert (unknown_account.value.status, unknown_account.value.code) == (401, 20003)
    assert world.rest("GET", f"/2010-04-01/Accounts/{world.full.sid}.json", auth=None).status_code == 401
    assert world.sandbox.messages() == []


def _expected_21608(to: str) -> str:
    return (
        f"The number {to} is unverified. Trial accounts cannot send messages to unverified numbers; "
        f"verify {to} at twilio.com/user/account/phone-numbers/verified, or purchase a Twilio number "
        "to send messages to unverified numbers"
    )


VALIDATION_CASES = [
    ("to-missing", dict(to="", from_="+15005550006", body="x"), 21604, "A 'To' phone number is required."),
    ("to-not-e164", dict(to="5551230001", from_="+15005550006", body="x"), 21211, "Invalid 'To' Phone Number: 5551230001"),
    ("to-letters", dict(to="+1555CALLNOW", from_="+15005550006", body="x"), 21211, "Invalid 'To' Phone Number: +1555CALLNOW"),
    ("from-missing", dict(to="+15551230001", body="x"), 21603, "A 'From' phone number is required."),
    (
        "from-not-ours",
        dict(to="+15551230001", from_="+15559990000", body="x"),
        21606,
        "The From phone number +15559990000 is not a valid, SMS-capable inbound phone number or short code for your account.",
    ),
    (
        "from-other-account",
        dict(to="+15551230001", from_="+15005550007", body="x"),
        21606,
        "The From phone number +15005550007 is not a valid, SMS-capable inbound phone number or short code for your account.",
    ),
    (
        "from-voice-only",
        dict(to="+15551230001", from_="+15005550009", body="x"),
        21606,
        "The From phone number +15005550009 is not a valid, SMS-capable inbound phone number or short code for your account.",
    ),
    ("body-missing", dict(to="+15551230001", from_="+15005550006"), 21602, "Message body is required."),
    ("body-empty", dict(to="+15551230001", from_="+15005550006", body=""), 21602, "Message body is required."),
    (
        "body-too-long",
        dict(to="+15551230001", from_="+15005550006", body="a" * 1601),
        21617,
        "The concatenated message body exceeds the 1600 character limit.",
    ),
    ("opted-out", dict(to="+15550000000", from_="+15005550006", body="x"), 21610, "Attempt to send to unsubscribed recipient"),
]


@pytest.mark.parametrize("case, kwargs, code, message", VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_sdk_validation_errors(world, case, kwargs, code, message):
    world.sandbox.add_number(world.full.sid, "+15005550009", sms=False)
    world.sandbox.opt_out("+15550000000")
    with pytest.raises(TwilioRestException) as raised:
        world.client().messages.create(**kwargs)
    assert (raised.value.status, raised.value.code) == (400, code)
    assert world.responses[-1].json() == {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }
    assert world.sandbox.messages() == []


def test_validation_order(world):
    # Each rule is checked before the next: the first broken one answers.
    world.sandbox.opt_out("+15551230001")
    assert world.post_message(From="nope", Body="a" * 2000).json()["code"] == 21604
    assert world.post_message(To="bad", Body="a" * 2000).json()["code"] == 21211
    assert world.post_message(To="+15551230001", Body="a" * 2000).json()["code"] == 21603
    assert world.post_message(To="+15551230001", From="+15559990000", Body="a" * 2000).json()["code"] == 21606
    assert world.post_message(To="+15551230001", From="+15005550006").json()["code"] == 21602
    assert world.post_message(To="+15551230001", From="+15005550006", Body="a" * 1601).json()["code"] == 21617
    assert world.post_message(To="+15551230001", From="+15005550006", Body="a" * 1600).json()["code"] == 21610
    trial = world.post_message("trial", To="+15551230001", From="+15005550007", Body="x").json()
    assert trial["code"] == 21610  # opted out wins over unverified


def test_trial_account_texts_only_verified_numbers(world):
    client = world.client(world.trial.sid)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to="+15551230001", from_="+15005550007", body="hi")
    assert (raised.value.status, raised.value.code) == (400, 21608)
    assert world.responses[-1].json()["message"] == _expected_21608("+15551230001")
    world.sandbox.verify_caller_id(world.trial.sid, "+15551230001")
    assert client.messages.create(to="+15551230001", from_="+15005550007", body="hi").status == "queued"
    # Full accounts text anyone.
    assert world.client().messages.create(to="+15551239999", from_="+15005550006", body="hi").status == "queued"


def test_opted_out_recipients_get_21610(world):
    client = world.client()
    world.sandbox.opt_out("+15551230001")
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to="+15551230001", from_="+15005550006", body="hi")
    assert (raised.value.status, raised.value.code) == (400, 21610)
    assert client.messages.create(to="+15551230002", from_="+15005550006", body="hi").status == "queued"
    world.sandbox.opt_in("+15551230001")
    assert client.messages.create(to="+15551230001", from_="+15005550006", body="hi").status == "queued"


def test_inject_429_then_success(world):
    client = world.client()
    world.sandbox.inject(status=429, retry_after=7)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to="+15551230001", from_="+15005550006", body="hi")
    assert (raised.value.status, raised.value.code) == (429, 20429)
    throttled = world.responses[-1]
    assert throttled.headers["Retry-After"] == "7"
    assert throttled.json() == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }
    assert world.sandbox.messages() == []
    message = client.messages.create(to="+15551230001", from_="+15005550006", body="hi")
    assert message.status == "queued"
    assert [m["sid"] for m in world.sandbox.messages()] == [message.sid]
    statuses = [r["status"] for r in world.sandbox.requests()]
    assert statuses == [429, 201]


def test_inject_500_defaults_and_explicit_codes(world):
    world.sandbox.inject(status=500, times=2)
    world.sandbox.inject(status=503, code=30001, message="Queue overflow")
    for _ in range(2):
        response = world.post_message(To="+15551230001", From="+15005550006", Body="x")
        assert response.status_code == 500 and response.json()["code"] == 20500
        assert "Retry-After" not in response.headers
    third = world.post_message(To="+15551230001", From="+15005550006", Body="x")
    assert (third.status_code, third.json()["code"], third.json()["message"]) == (503, 30001, "Queue overflow")
    assert world.post_message(To="+15551230001", From="+15005550006", Body="x").status_code == 201


def test_inject_matches_method_and_path_and_beats_auth(world):
    world.sandbox.inject(method="GET", path_suffix="/IncomingPhoneNumbers.json", status=503)
    assert world.post_message(To="+15551230001", From="+15005550006", Body="x").status_code == 201
    assert world.rest("GET", f"/2010-04-01/Accounts/{world.full.sid}.json").status_code == 200
    numbers = f"/2010-04-01/Accounts/{world.full.sid}/IncomingPhoneNumbers.json"
    assert world.rest("GET", numbers, auth=("AC" + "0" * 32, "wrong")).status_code == 503  # before auth
    assert world.rest("GET", numbers, auth=("AC" + "0" * 32, "wrong")).status_code == 401


def test_inject_reset_drops_the_connection(world):
    client = world.client()
    world.sandbox.inject(reset=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.messages.create(to="+15551230001", from_="+15005550006", body="hi")
    assert world.sandbox.messages() == []
    assert client.messages.create(to="+15551230001", from_="+15005550006", body="hi").status == "queued"
    assert [(r["status"], r.get("injected")) for r in world.sandbox.requests()] == [(None, "reset"), (201, None)]


def test_inject_delay(world):
    world.sandbox.inject(delay=0.4, status=None)  # slow, then served normally
    started = time.monotonic()
    message = world.client().messages.create(to="+15551230001", from_="+15005550006", body="slow")
    assert time.monotonic() - started >= 0.4
    assert message.status == "queued"

    world.sandbox.inject(delay=0.4, status=503)  # slow, then failing
    started = time.monotonic()
    with pytest.raises(TwilioRestException) as raised:
        world.client().messages.create(to="+15551230001", from_="+15005550006", body="x")
    assert time.monotonic() - started >= 0.4 and raised.value.status == 503 and raised.value.code == 20503

    world.sandbox.inject(delay=2.0, status=500)  # slower than the client will wait
    impatient = world.client(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        impatient.messages.create(to="+15551230001", from_="+15005550006", body="x")
    assert time.monotonic() - started < 2.0  # it gave up before the answer came


def test_unknown_paths_and_methods(world):
    calls = world.rest("GET", f"/2010-04-01/Accounts/{world.full.sid}/Calls.json")
    assert calls.status_code == 404
    assert calls.json() == {
        "code": 20404,
        "message": f"The requested resource /2010-04-01/Accounts/{world.full.sid}/Calls.json was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    assert world.rest("DELETE", f"/2010-04-01/Accounts/{world.full.sid}/Messages.json").json()["code"] == 20004
    assert world.rest("GET", f"/2010-04-01/Accounts/{world.full.sid}/Calls.json", auth=None).status_code == 401


def test_wait_for_messages_times_out_clearly(world):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"waited 0.2s for 1 outbound message\(s\) to \+15551230001, got 0"):
        world.sandbox.wait_for_messages(1, to="+15551230001", timeout=0.2)
    assert time.monotonic() - started < 1.5


def test_wait_for_messages_sees_a_message_sent_meanwhile(world):
    sender = threading.Timer(0.1, lambda: world.client().messages.create(to="+15551230001", from_="+15005550006", body="later"))
    sender.start()
    try:
        (message,) = world.sandbox.wait_for_messages(1, to="+15551230001", timeout=5)
    finally:
        sender.join()
    assert message["form"]["Body"] == "later"


# --------------------------------------------------------------------------------------
# Signing and the phone
# --------------------------------------------------------------------------------------

# The worked example of Twilio's "Webhooks security" guide.
PUBLISHED_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PUBLISHED_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
PUBLISHED_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilios_published_signature_vector():
    assert reference_signature("12345", PUBLISHED_URL, PUBLISHED_PARAMS) == PUBLISHED_SIGNATURE
    validator = RequestValidator("12345")
    assert validator.compute_signature(PUBLISHED_URL, PUBLISHED_PARAMS) == PUBLISHED_SIGNATURE
    assert validator.validate(PUBLISHED_URL, PUBLISHED_PARAMS, PUBLISHED_SIGNATURE)
    assert not validator.validate(PUBLISHED_URL, {**PUBLISHED_PARAMS, "Digits": "9999"}, PUBLISHED_SIGNATURE)
    assert not RequestValidator("54321").validate(PUBLISHED_URL, PUBLISHED_PARAMS, PUBLISHED_SIGNATURE)


INBOUND_FIELDS = {
    "ToCountry", "ToState", "SmsMessageSid", "NumMedia", "ToCity", "FromZip", "SmsSid", "FromState", "SmsStatus",
    "FromCity", "Body", "FromCountry", "To", "ToZip", "NumSegments", "MessageSid", "AccountSid", "From", "ApiVersion",
}


def test_send_inbound_posts_a_signed_twilio_webhook(world):
    with Receiver() as receiver:
        world.sandbox.add_number(world.full.sid, "+15005550010", sms_url=receiver.url())
        status, text = world.sandbox.send_inbound(from_="+15551230001", to="+15005550010", body="hello there")
        assert (status, text) == (200, '<?xml version="1.0" encoding="UTF-8"?><Response/>')
        world.sandbox.send_inbound(from_="+15551230001", to="+15005550010", body="again")

    first, second = receiver.requests
    assert first["method"] == "POST" and first["url"] == receiver.url()
    headers = first["headers"]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["User-Agent"] == "TwilioProxy/1.1"
    params = first["params"]
    assert set(params) == INBOUND_FIELDS
    assert (params["From"], params["To"], params["Body"]) == ("+15551230001", "+15005550010", "hello there")
    assert (params["AccountSid"], params["ApiVersion"], params["SmsStatus"]) == (world.full.sid, "2010-04-01", "received")
    assert (params["NumMedia"], params["NumSegments"], params["ToCountry"], params["FromCountry"]) == ("0", "1", "US", "US")
    assert re.fullmatch(r"SM[0-9a-f]{32}", params["MessageSid"])
    assert params["MessageSid"] == params["SmsSid"] == params["SmsMessageSid"]
    assert second["params"]["MessageSid"] != params["MessageSid"]

    signature = headers["X-Twilio-Signature"]
    assert signature == reference_signature(world.full.auth_token, first["url"], params)
    assert RequestValidator(world.full.auth_token).validate(first["url"], params, signature)
    assert not RequestValidator(world.trial.auth_token).validate(first["url"], params, signature)
    assert not RequestValidator(world.full.auth_token).validate(first["url"], {**params, "Body": "tampered"}, signature)
    assert [i["message_sid"] for i in world.sandbox.inbound()] == [params["MessageSid"], second["params"]["MessageSid"]]


def test_send_inbound_with_media_query_string_and_overrides(world):
    with Receiver() as receiver:
        url = receiver.url("/hook?tenant=acme&x=1")
        world.sandbox.add_number(world.trial.sid, "+447700900123", sms_url=url)
        world.sandbox.send_inbound(
            from_="+15551230001",
            to="+447700900123",
            body="look",
            media=[("https://example.com/cat.jpg", "image/jpeg"), ("https://example.com/a.pdf", "application/pdf")],
            message_sid="SM" + "1" * 32,
            extra={"FromCity": "SPRINGFIELD", "OptOutType": "HELP", "ToZip": None},
        )
    (req,) = receiver.requests
    params = req["params"]
    assert req["url"] == url
    assert params["NumMedia"] == "2"
    assert (params["MediaUrl0"], params["MediaContentType0"]) == ("https://example.com/cat.jpg", "image/jpeg")
    assert (params["MediaUrl1"], params["MediaContentType1"]) == ("https://example.com/a.pdf", "application/pdf")
    assert params["MessageSid"] == params["SmsSid"] == "SM" + "1" * 32
    assert (params["ToCountry"], params["FromCity"], params["OptOutType"]) == ("GB", "SPRINGFIELD", "HELP")
    assert "ToZip" not in params
    assert params["AccountSid"] == world.trial.sid
    assert RequestValidator(world.trial.auth_token).validate(url, params, req["headers"]["X-Twilio-Signature"])
    assert not RequestValidator(world.full.auth_token).validate(url, params, req["headers"]["X-Twilio-Signature"])


def test_send_inbound_honours_sms_method_get(world):
    with Receiver() as receiver:
        world.sandbox.add_number(world.full.sid, "+15005550011", sms_url=receiver.url("/hook"), sms_method="GET")
        status, _ = world.sandbox.send_inbound(from_="+15551230001", to="+15005550011", body="get me")
    (req,) = receiver.requests
    assert status == 200 and req["method"] == "GET" and req["raw"] == ""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req["url"]).query, keep_blank_values=True))
    assert query["Body"] == "get me" and set(query) == INBOUND_FIELDS
    assert RequestValidator(world.full.auth_token).validate(req["url"], {}, req["headers"]["X-Twilio-Signature"])


def test_send_inbound_signature_override_and_app_verdict(world):
    def verify(receiver: Receiver, req: dict) -> tuple[int, str]:
        signature = req["headers"].get("X-Twilio-Signature")
        ok = signature is not None and RequestValidator(world.full.auth_token).validate(req["url"], req["params"], signature)
        return (200, "<Response/>") if ok else (403, "bad signature")

    with Receiver(verify) as receiver:
        world.sandbox.add_number(world.full.sid, "+15005550012", sms_url=receiver.url())
        assert world.sandbox.send_inbound(from_="+15551230001", to="+15005550012", body="ok") == (200, "<Response/>")
        forged = world.sandbox.send_inbound(from_="+15551230001", to="+15005550012", body="x", signature="Zm9yZ2Vk")
        assert forged == (403, "bad signature")
        assert world.sandbox.send_inbound(from_="+15551230001", to="+15005550012", body="x", signature="") == (403, "bad signature")
    assert receiver.requests[1]["headers"]["X-Twilio-Signature"] == "Zm9yZ2Vk"
    assert "X-Twilio-Signature" not in receiver.requests[2]["headers"]


def test_send_inbound_failures_are_bounded_and_clear(world, monkeypatch):
    with pytest.raises(SandboxError, match="not a sandbox number"):
        world.sandbox.send_inbound(from_="+15551230001", to="+15559998888", body="x")
    with pytest.raises(SandboxError, match="has no sms_url"):
        world.sandbox.send_inbound(from_="+15551230001", to="+15005550007", body="x")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="could not deliver the webhook"):
        world.sandbox.send_inbound(from_="+15551230001", to="+15005550006", body="x")  # port 9: nobody listens
    assert time.monotonic() - started < 5

    monkeypatch.setattr(sandbox_server, "WEBHOOK_TIMEOUT", 0.3)
    with Receiver(lambda receiver, req: (time.sleep(2.0), (200, ""))[1]) as slow:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer within 0.3s"):
            world.sandbox.send_inbound(from_="+15551230001", to="+15005550006", body="x", url=slow.url())
        assert time.monotonic() - started < 2.0  # it gave up before the answer came


def test_replying_stop_opts_the_phone_out(world):
    with Receiver() as receiver:
        world.sandbox.add_number(world.full.sid, "+15005550013", sms_url=receiver.url())
        world.sandbox.send_inbound(from_="+15551230001", to="+15005550013", body=" stop ")
        assert world.post_message(To="+15551230001", From="+15005550013", Body="x").json()["code"] == 21610
        world.sandbox.send_inbound(from_="+15551230001", to="+15005550013", body="START")
        assert world.post_message(To="+15551230001", From="+15005550013", Body="x").status_code == 201
    assert [r["params"]["Body"] for r in receiver.requests] == [" stop ", "START"]  # still delivered


# --------------------------------------------------------------------------------------
# Control endpoints (what `sophon sms simulate` uses from another process)
# --------------------------------------------------------------------------------------


def test_control_inbound_and_messages(world):
    def echo(receiver: Receiver, req: dict) -> tuple[int, str]:
        # The "application": answers the text through the REST API, like Sophon would.
        world.client().messages.create(to=req["params"]["From"], from_=req["params"]["To"], body="echo: " + req["params"]["Body"])
        return 200, "<Response/>"

    with Receiver(echo) as receiver:
        world.sandbox.add_number(world.full.sid, "+15005550014", sms_url=receiver.url())
        world.client().messages.create(to="+15559990000", from_="+15005550006", body="unrelated")
        response = requests.post(
            world.sandbox.url + "/_sandbox/inbound",
            json={"from": "+15551230001", "to": "+15005550014", "body": "hello"},
            timeout=HTTP_TIMEOUT,
        )
    assert response.status_code == 200
    result = response.json()
    assert (result["status"], result["body"], result["messages_before"]) == (200, "<Response/>", 1)
    assert re.fullmatch(r"SM[0-9a-f]{32}", result["message_sid"])
    assert receiver.requests[0]["params"]["MessageSid"] == result["message_sid"]

    listed = requests.get(
        world.sandbox.url + "/_sandbox/messages", params={"to": "+15551230001", "after": 0}, timeout=HTTP_TIMEOUT
    ).json()["messages"]
    (reply,) = listed
    assert reply["index"] == 2 and reply["form"]["Body"] == "echo: hello" and reply["form"]["From"] == "+15005550014"
    assert reply["response"]["status"] == "queued" and reply["sid"] == reply["response"]["sid"]
    assert "auth_user" not in reply
    everything = requests.get(world.sandbox.url + "/_sandbox/messages", timeout=HTTP_TIMEOUT).json()["messages"]
    assert [m["index"] for m in everything] == [1, 2]
    after = requests.get(world.sandbox.url + "/_sandbox/messages?after=2", timeout=HTTP_TIMEOUT).json()
    assert after == {"messages": []}
    assert [m["index"] for m in requests.get(world.sandbox.url + "/_sandbox/messages?after=1", timeout=HTTP_TIMEOUT).json()["messages"]] == [2]


def test_control_endpoint_errors(world):
    url = world.sandbox.url
    bad_json = requests.post(url + "/_sandbox/inbound", data="{nope", timeout=HTTP_TIMEOUT)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    unknown = requests.post(url + "/_sandbox/inbound", json={"to": "+15559998888", "body": "x"}, timeout=HTTP_TIMEOUT)
    assert unknown.status_code == 400 and "not a sandbox number" in unknown.json()["error"]
    unreachable = requests.post(url + "/_sandbox/inbound", json={"to": "+15005550006", "body": "x"}, timeout=HTTP_TIMEOUT)
    assert unreachable.status_code == 502 and "could not deliver" in unreachable.json()["error"]
    assert requests.get(url + "/_sandbox/nothing", timeout=HTTP_TIMEOUT).status_code == 404
    assert requests.get(url + "/_sandbox/messages?after=x", timeout=HTTP_TIMEOUT).status_code == 400
    assert world.sandbox.requests() == []  # control calls are not REST requests


# --------------------------------------------------------------------------------------
# Secrets, demo and CLI
# --------------------------------------------------------------------------------------


def test_auth_tokens_are_never_recorded(world):
    wrong = "f" * 32
    client = world.client()
    client.api.v2010.account.fetch()
    client.messages.create(to="+15551230001", from_="+15005550006", body="hi")
    with pytest.raises(TwilioRestException):
        world.client(world.full.sid, wrong).api.v2010.account.fetch()
    records = world.sandbox.requests()
    assert len(records) == 3
    assert {r["auth_user"] for r in records} == {world.full.sid}
    assert [r["status"] for r in records] == [200, 201, 401]
    dumped = json.dumps([records, world.sandbox.messages(), world.sandbox.inbound()])
    for secret in (world.full.auth_token, world.trial.auth_token, wrong):
        assert secret not in dumped, "an auth token was recorded"
    assert world.full.auth_token not in repr(world.full) and world.full.auth_token not in repr(world.sandbox)


def test_demo_sandbox():
    with Receiver() as receiver:
        sandbox = demo_sandbox(sms_url=receiver.url())
        try:
            assert re.fullmatch(r"AC[0-9a-f]{32}", DEMO_ACCOUNT_SID) and len(DEMO_AUTH_TOKEN) == 32
            assert DEMO_AUTH_TOKEN.startswith("sandbox")
            assert (DEMO_NUMBER, DEMO_PEER) == ("+15005550006", "+15551230001")
            client = Client(DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, http_client=TwilioHttpClient(timeout=HTTP_TIMEOUT))
            client.api.base_url = sandbox.url
            assert client.api.v2010.account.fetch().type == "Full"
            (number,) = client.incoming_phone_numbers.list(phone_number=DEMO_NUMBER)
            assert number.sms_url == receiver.url()
            assert sandbox.send_inbound(from_=DEMO_PEER, to=DEMO_NUMBER, body="hi")[0] == 200
            assert client.messages.create(to=DEMO_PEER, from_=DEMO_NUMBER, body="hello").status == "queued"
        finally:
            sandbox.stop()
    (req,) = receiver.requests
    assert RequestValidator(DEMO_AUTH_TOKEN).validate(req["url"], req["params"], req["headers"]["X-Twilio-Signature"])


def test_main_runs_until_interrupted_and_hides_the_token():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sophon_sms_twilio.sandbox", "--port", "0", "--sms-url", "http://127.0.0.1:9/hook"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
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
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", banner)
        assert match, banner
        fetched = requests.get(
            f"{match.group(1)}/2010-04-01/Accounts/{DEMO_ACCOUNT_SID}.json",
            auth=(DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN),
            timeout=HTTP_TIMEOUT,
        )
        assert fetched.status_code == 200 and fetched.json()["type"] == "Full"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    output = banner + rest
    assert proc.returncode == 0, output
    assert DEMO_ACCOUNT_SID in output and DEMO_NUMBER in output and "http://127.0.0.1:9/hook" in output
    assert "stopped" in rest
    assert DEMO_AUTH_TOKEN not in output, "main() printed the auth token"
