"""The OpenAPI 3.1 document of the admin API, served at ``GET /api/openapi.json``.

A test checks that it is a valid OpenAPI document, that it lists exactly the
routes ``admin_api.ROUTES`` mounts, and that real responses match its schemas.
"""
from __future__ import annotations

from typing import Any

import falcon

_ERROR = {"$ref": "#/components/schemas/Error"}
_CHANNEL = {"$ref": "#/components/schemas/Channel"}
_ID = {"name": "channel_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    words = {400: "Body is not the expected JSON shape", 401: "Admin token missing or wrong",
             403: "Cross-origin request refused", 404: "No such channel",
             409: "A channel with this id exists", 415: "Body is not JSON",
             422: "The change would make channels.json invalid; nothing changed"}
    return {str(c): _json(_ERROR, words[c]) for c in codes}


def _op(summary: str, ok: dict, *codes: int, body: dict | None = None, params: bool = True,
        op_id: str = "") -> dict:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "responses": {**ok, **_errors(401, *codes)}}
    if params:
        op["parameters"] = [_ID]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def document() -> dict:
    channel_ok = {"200": _json(_CHANNEL, "The channel as it is now")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sophon admin API", "version": "1",
                 "description": "Manage channels: the same operations as the dashboard and the `sophon channels` "
                                "CLI, all written through one locked, validated, atomic writer of channels.json. "
                                "Secret fields (writeOnly in a type's schema) are accepted but never returned."},
        "security": [{"adminToken": []}],
        "paths": {
            "/api/channel-types": {"get": _op(
                "Installed channel types with their config JSON Schemas", {"200": _json(
                    {"type": "array", "items": {"$ref": "#/components/schemas/ChannelType"}}, "Types")},
                params=False, op_id="listChannelTypes")},
            "/api/agents": {"get": _op("Agents that routing.agentId may name", {"200": _json(
                {"type": "array", "items": {"type": "object", "required": ["id"],
                                            "properties": {"id": {"type": "string"}}}}, "Agents")},
                params=False, op_id="listAgents")},
            "/api/channels": {
                "get": _op("List channels", {"200": _json({
                    "type": "object", "required": ["channels", "warnings"],
                    "properties": {"channels": {"type": "array", "items": _CHANNEL},
                                   "warnings": {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}}}},
                    "Every channel in channels.json")}, params=False, op_id="listChannels"),
                "post": _op("Add a channel (disabled unless `enabled` is true)",
                            {"201": _json(_CHANNEL, "Created")}, 400, 403, 409, 415, 422,
                            body={"$ref": "#/components/schemas/NewChannel"}, params=False, op_id="createChannel"),
            },
            "/api/channels/{channel_id}": {
                "get": _op("One channel", channel_ok, 404, op_id="getChannel"),
                "patch": _op("Change fields; config is merged, a blank secret keeps its value", channel_ok,
                             400, 403, 404, 415, 422, body={"$ref": "#/components/schemas/ChannelPatch"},
                             op_id="updateChannel"),
                "delete": _op("Remove the channel", {"204": {"description": "Removed"}}, 403, 404,
                              op_id="deleteChannel"),
            },
            "/api/channels/{channel_id}/test": {"post": _op(
                "Test the connection (the plugin's checks, in its own words); the status is recorded",
                {"200": _json({"$ref": "#/components/schemas/TestResult"}, "The result")}, 403, 404,
                op_id="testChannel")},
            "/api/channels/{channel_id}/activate": {"post": _op(
                "Activate: the webhook answers", channel_ok, 403, 404, 422, op_id="activateChannel")},
            "/api/channels/{channel_id}/deactivate": {"post": _op(
                "Deactivate: the webhook answers 404, nothing is sent", channel_ok, 403, 404, 422,
                op_id="deactivateChannel")},
            "/api/channels/{channel_id}/routing": {"put": _op(
                "Set routing (agentId, dmBehavior)", channel_ok, 400, 403, 404, 415, 422,
                body={"$ref": "#/components/schemas/Routing"}, op_id="setRouting")},
        },
        "components": {
            "securitySchemes": {"adminToken": {
                "type": "http", "scheme": "bearer",
                "description": "SOPHON_ADMIN_TOKEN, or the content of admin.token in SOPHON_DATA_DIR"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["channel", "path", "message", "level"], "properties": {
                    "channel": {"type": "string"}, "path": {"type": "string", "description": "e.g. config.accountSid"},
                    "message": {"type": "string"}, "level": {"enum": ["error", "warning"]}}},
                "Error": {"type": "object", "required": ["title"], "properties": {
                    "title": {"type": "string"}, "description": {"type": ["string", "null"]},
                    "errors": {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}}}},
                "Routing": {"type": "object", "properties": {
                    "agentId": {"type": "string"}, "dmBehavior": {"enum": ["main-session", "per-peer"]}}},
                "Channel": {"type": "object", "required": ["id", "type", "name", "enabled", "status", "config",
                                                           "secrets", "routing"], "properties": {
                    "id": {"type": "string"}, "type": {"type": "string"}, "typeName": {"type": "string"},
                    "name": {"type": "string"}, "enabled": {"type": "boolean"},
                    "status": {"type": "string", "description": "connected, error: <reason>, disabled, not tested"},
                    "lastTest": {"type": ["string", "null"]}, "address": {"type": ["string", "null"]},
                    "config": {"type": "object", "description": "without secret fields"},
                    "secrets": {"type": "object", "additionalProperties": {"type": "boolean"},
                                "description": "secret field -> whether a value is stored"},
                    "routing": {"$ref": "#/components/schemas/Routing"},
                    "access": {"type": "object"}, "limits": {"type": "object"},
                    "webhookPath": {"type": ["string", "null"]},
                    "webhookUrl": {"type": ["string", "null"],
                                   "description": "the URL to give the provider; null without a public base URL"}}},
                "NewChannel": {"type": "object", "required": ["id", "type", "config"], "properties": {
                    "id": {"type": "string"}, "type": {"type": "string"}, "name": {"type": "string"},
                    "enabled": {"type": "boolean", "default": False}, "config": {"type": "object"},
                    "routing": {"$ref": "#/components/schemas/Routing"}, "access": {"type": "object"},
                    "limits": {"type": "object"}}},
                "ChannelPatch": {"type": "object", "properties": {
                    "name": {"type": "string"}, "enabled": {"type": "boolean"}, "config": {"type": "object"},
                    "routing": {"$ref": "#/components/schemas/Routing"},
                    "access": {"type": ["object", "null"]}, "limits": {"type": ["object", "null"]}}},
                "TestResult": {"type": "object", "required": ["id", "ok", "status", "checks"], "properties": {
                    "id": {"type": "string"}, "ok": {"type": "boolean"}, "status": {"type": "string"},
                    "checks": {"type": "array", "items": {"type": "object", "required": ["level", "message"],
                                                          "properties": {"level": {"type": "string"},
                                                                         "message": {"type": "string"}}}},
                    "channel": _CHANNEL}},
                "ChannelType": {"type": "object", "required": ["name", "displayName", "configSchema"], "properties": {
                    "name": {"type": "string"}, "displayName": {"type": "string"},
                    "configSchema": {"type": "object", "description": "JSON Schema draft 2020-12"},
                    "secretFields": {"type": "array", "items": {"type": "string"}},
                    "addressField": {"type": ["string", "null"]}, "webhookPath": {"type": "string"}}},
            },
        },
    }


class OpenApiResource:
    """``GET /api/openapi.json`` (public: it describes the API, it holds no data)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = document()
