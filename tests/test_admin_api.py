"""The admin API over a throwaway channel type: auth, CRUD, errors with field paths, OpenAPI."""
from __future__ import annotations

import json
import stat

import falcon.testing
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec

from dummy_channel import dummy_channel
from sophon_core import admin_api
from sophon_core.app import create_app
from sophon_core.openapi import document

ADMIN = "admin-token-for-tests-0001"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
TOKEN = "canary-secret-9c41"


@pytest.fixture
def api(make_runtime, caplog):
    """(client, runtime); every response is checked against the OpenAPI document."""
    caplog.set_level("DEBUG")
    rt = make_runtime([dummy_channel("d1", token=TOKEN, routing={"dmBehavior": "per-peer"})],
                      env={"SOPHON_ADMIN_TOKEN": ADMIN})
    client = falcon.testing.TestClient(create_app(rt))
    yield client, rt
    assert TOKEN not in caplog.text and ADMIN not in caplog.text


def call(client, method, path, body=None, headers=AUTH):
    kwargs = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    resp = client.simulate_request(method, path, **kwargs)
    assert TOKEN not in resp.text, f"{method} {path} leaked a secret"
    check_against_openapi(method, path, resp)
    return resp


def check_against_openapi(method, path, resp):
    """The response's body matches the schema the OpenAPI document gives for its status."""
    doc = document()
    template = next((t for t in admin_api.ROUTES if _matches(t, path)), None)
    if template is None:
        return
    responses = doc["paths"][template][method.lower()]["responses"]
    assert str(resp.status_code) in responses, f"{method} {path} answered {resp.status_code}, not documented"
    content = responses[str(resp.status_code)].get("content")
    if content:
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        jsonschema.validate(resp.json, schema, cls=jsonschema.Draft202012Validator)


def _matches(template, path):
    t, p = template.split("/"), path.split("?")[0].split("/")
    return len(t) == len(p) and all(a == b or a.startswith("{") for a, b in zip(t, p))


def test_the_openapi_document_is_valid_and_lists_exactly_the_mounted_routes(api):
    client, _ = api
    doc = client.simulate_get("/api/openapi.json").json  # public: no data in it
    validate_spec(doc)
    assert set(doc["paths"]) == set(admin_api.ROUTES)
    for path, cls in admin_api.ROUTES.items():
        implemented = {m for m in ("get", "post", "put", "patch", "delete") if hasattr(cls, f"on_{m}")}
        assert set(doc["paths"][path]) == implemented, path


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}])
def test_every_admin_route_needs_the_token(api, headers):
    client, _ = api
    for template, cls in admin_api.ROUTES.items():
        path = template.replace("{channel_id}", "d1")
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if hasattr(cls, f"on_{method.lower()}"):
                resp = client.simulate_request(method, path, headers=headers, json={})
                assert resp.status_code == 401, (method, path)
                assert resp.json["title"] == "admin token required"
                assert resp.headers["WWW-Authenticate"] == "Bearer"
    # Webhooks and the health check stay public; the channel was not touched.
    assert client.simulate_get("/healthz").status_code == 200
    assert call(client, "GET", "/api/channels/d1").json["enabled"] is True


def test_a_cross_site_request_changes_nothing(api):
    client, _ = api
    resp = client.simulate_post("/api/channels/d1/deactivate",
                                headers={**AUTH, "Origin": "https://evil.example"})
    assert resp.status_code == 403
    assert call(client, "GET", "/api/channels/d1").json["enabled"] is True
    same = client.simulate_post("/api/channels/d1/deactivate",
                                headers={**AUTH, "Origin": "http://falconframework.org"})
    assert same.status_code == 200  # the TestClient's own host: a page of this server


def test_create_test_activate_and_remove(api, sent):
    client, rt = api
    created = call(client, "POST", "/api/channels", {"id": "d2", "type": "dummy", "name": "Second",
                                                     "config": {"address": "dummy:ann", "token": "another-secret"}})
    assert created.status_code == 201 and created.headers["Location"] == "/api/channels/d2"
    view = created.json
    assert (view["enabled"], view["status"], view["secrets"], view["config"]) == (
        False, "disabled", {"token": True}, {"address": "dummy:ann"})
    assert "another-secret" not in created.text
    stored = json.loads(rt.settings.channels_path.read_text())
    assert stored["channels"][1]["config"]["token"].startswith("enc:v1:")

    tested = call(client, "POST", "/api/channels/d2/test").json
    assert (tested["ok"], tested["status"], tested["checks"]) == (
        True, "connected", [{"level": "ok", "message": "dummy dummy:ann reachable"}])
    assert tested["channel"]["lastTest"] == "connected"

    active = call(client, "POST", "/api/channels/d2/activate").json
    assert (active["enabled"], active["status"]) == (True, "connected")
    webhook = {"token": "another-secret", "to": "dummy:ann", "from": "dummy:zed", "id": "m1", "text": "hi"}
    assert client.simulate_post("/api/channels/dummy/webhook", body=json.dumps(webhook)).status_code == 200

    listed = call(client, "GET", "/api/channels").json
    assert [(c["id"], c["status"]) for c in listed["channels"]] == [("d1", "not tested"), ("d2", "connected")]

    assert call(client, "POST", "/api/channels/d2/deactivate").json["status"] == "disabled"
    assert client.simulate_post("/api/channels/dummy/webhook", body=json.dumps({**webhook, "id": "m2"})
                                ).status_code == 404
    assert call(client, "DELETE", "/api/channels/d2").status_code == 204
    assert call(client, "GET", "/api/channels/d2").status_code == 404
    assert [c["id"] for c in json.loads(rt.settings.channels_path.read_text())["channels"]] == ["d1"]


def test_invalid_input_is_422_with_field_paths_and_changes_nothing(api):
    client, rt = api
    before = rt.settings.channels_path.read_bytes()
    resp = call(client, "POST", "/api/channels", {"id": "bad id!", "type": "dummy", "routing": {"dmBehavior": "x"},
                                                  "config": {"address": "nope", "token": "tiny7"}})
    assert resp.status_code == 422
    got = {(e["path"], e["message"]) for e in resp.json["errors"]}
    assert ("config.address", "'nope' is not a dummy address (example: dummy:bob)") in got
    assert ("config.token", "value is too short (minLength 8)") in got
    assert any(p == "id" for p, _ in got) and any(p == "routing.dmBehavior" for p, _ in got)
    assert not any("tiny7" in m for _, m in got)
    assert call(client, "POST", "/api/channels", {"id": "d1", "type": "dummy",
                                                  "config": {"address": "dummy:cat", "token": "12345678"}}
                ).status_code == 409
    assert call(client, "POST", "/api/channels", {"id": "d9", "type": "nosuch", "config": {}}).json["errors"] == [
        {"channel": "d9", "path": "type", "message": "unknown channel type 'nosuch' (installed: dummy); install "
         "its plugin or fix the type", "level": "error"}]
    assert call(client, "POST", "/api/channels", {"id": "d9", "type": "dummy", "config": {}, "colour": "red"}
                ).json["errors"][0]["path"] == "colour"
    assert call(client, "POST", "/api/channels", ["not", "an", "object"]).status_code == 400
    raw = client.simulate_post("/api/channels", headers={**AUTH, "Content-Type": "application/json"}, body="{oops")
    assert raw.status_code == 400 and raw.json["title"] == "invalid JSON"
    form = client.simulate_post("/api/channels", headers={**AUTH, "Content-Type": "text/plain"}, body="{}")
    assert form.status_code == 415
    assert call(client, "PATCH", "/api/channels/nosuch", {"name": "x"}).status_code == 404
    assert rt.settings.channels_path.read_bytes() == before


def test_patch_merges_config_and_a_blank_secret_keeps_the_stored_one(api, sent):
    client, rt = api
    resp = call(client, "PATCH", "/api/channels/d1", {"name": "Renamed", "config": {"token": ""}})
    assert resp.json["name"] == "Renamed" and resp.json["secrets"] == {"token": True}
    rt.reload_if_changed(every=0)
    assert rt.config.get("d1").config["token"] == TOKEN
    new_secret = "replacement-secret-77"
    resp = call(client, "PATCH", "/api/channels/d1", {"config": {"token": new_secret}})
    assert new_secret not in resp.text
    rt.reload_if_changed(every=0)
    assert rt.config.get("d1").config["token"] == new_secret
    assert new_secret not in rt.settings.channels_path.read_text()
    # A changed config clears the last test's status.
    call(client, "POST", "/api/channels/d1/test")
    assert call(client, "GET", "/api/channels/d1").json["status"] == "connected"
    assert call(client, "PATCH", "/api/channels/d1", {"config": {"address": "dummy:eve"}}).json["status"] == \
        "not tested"
    bad = call(client, "PATCH", "/api/channels/d1", {"config": {"address": "dummy:EVE"}, "enabled": "yes"})
    assert bad.status_code == 422
    assert {e["path"] for e in bad.json["errors"]} == {"config.address", "enabled"}


def test_routing_and_agents(api):
    client, _ = api
    assert call(client, "GET", "/api/agents").json == [{"id": "default"}]
    resp = call(client, "PUT", "/api/channels/d1/routing", {"agentId": "default", "dmBehavior": "main-session"})
    assert resp.json["routing"] == {"agentId": "default", "dmBehavior": "main-session"}
    bad = call(client, "PUT", "/api/channels/d1/routing", {"agentId": "gpt"})
    assert bad.status_code == 422
    assert bad.json["errors"][0]["path"] == "routing.agentId"


def test_channel_types_carry_their_schema_for_forms(api):
    client, _ = api
    (dummy,) = call(client, "GET", "/api/channel-types").json
    assert (dummy["name"], dummy["displayName"], dummy["secretFields"], dummy["webhookPath"]) == (
        "dummy", "Dummy", ["token"], "/api/channels/dummy/webhook")
    assert dummy["configSchema"]["properties"]["token"]["writeOnly"] is True


def test_a_generated_admin_token_is_stored_private(make_runtime):
    rt = make_runtime([dummy_channel()])
    client = falcon.testing.TestClient(create_app(rt))
    path = rt.settings.data_dir / "admin.token"
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 40
    assert client.simulate_get("/api/channels").status_code == 401
    ok = client.simulate_get("/api/channels", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    # A second app (another worker) uses the same token.
    again = falcon.testing.TestClient(create_app(rt))
    assert again.simulate_get("/api/channels", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_behind_a_proxy_the_public_origin_may_change_things(make_runtime):
    rt = make_runtime([dummy_channel()], env={"SOPHON_ADMIN_TOKEN": ADMIN,
                                              "SOPHON_PUBLIC_URL": "https://bot.example.com"})
    client = falcon.testing.TestClient(create_app(rt))
    public = client.simulate_post("/api/channels/d1/deactivate",
                                  headers={**AUTH, "Origin": "https://bot.example.com", "Host": "10.0.0.5:8080"})
    assert public.status_code == 200
    other = client.simulate_post("/api/channels/d1/activate",
                                 headers={**AUTH, "Origin": "https://evil.example", "Host": "10.0.0.5:8080"})
    assert other.status_code == 403
    got = client.simulate_get("/api/channels/d1", headers=AUTH).json
    assert (got["enabled"], got["webhookUrl"]) == (False, "https://bot.example.com/api/channels/dummy/webhook")
