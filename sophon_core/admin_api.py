"""The admin REST API: ``/api/channels``, ``/api/channel-types``, ``/api/agents``.

Every resource here has ``admin = True``: ``admin.AdminGuard`` lets a request
through only with the admin token. The OpenAPI document (``/api/openapi.json``,
see ``openapi.py``) describes these routes. Errors are JSON:
``{"title": ..., "description": ..., "errors": [{"channel", "path", "message", "level"}]}``.
"""
from __future__ import annotations

import json
import logging

import falcon

from . import manage
from .errors import ConfigError
from .plugins import agents as find_agents
from .resources import read_body
from .runtime import Runtime
from .secrets import SecretKeyError

log = logging.getLogger("sophon.admin")


class _Admin:
    admin = True

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @property
    def manager(self) -> manage.Manager:
        rt = self.runtime
        return manage.Manager(rt.settings, rt.pm, rt.types, list(rt.agents))

    def fresh(self):
        """The config as it is on disk now (another worker may have just written it)."""
        self.runtime.reload_if_changed(every=0)
        return self.runtime.config

    def body(self, req: falcon.Request):
        raw = read_body(req, self.runtime.settings.max_body_bytes)
        if (req.content_type or "").split(";")[0].strip().lower() != "application/json":
            raise falcon.HTTPUnsupportedMediaType(title="JSON expected",
                                                  description="send the body as Content-Type: application/json")
        try:
            return json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise falcon.HTTPBadRequest(title="invalid JSON", description=str(exc)) from None

    def done(self, resp: falcon.Response, channel, status=falcon.HTTP_200) -> None:
        self.runtime.reload_if_changed(every=0)
        resp.status = status
        resp.media = manage.view(channel, self.runtime.types, self.runtime.settings)


class ChannelTypes(_Admin):
    """``GET /api/channel-types``: installed types with their config schemas (for forms)."""

    def on_get(self, req, resp):
        resp.media = [manage.type_view(ct) for _, ct in sorted(self.runtime.types.items())]


class Agents(_Admin):
    """``GET /api/agents``: the agents ``routing.agentId`` may name."""

    def on_get(self, req, resp):
        resp.media = [{"id": a} for a in sorted(find_agents(self.runtime.pm))]


class Channels(_Admin):
    """``GET /api/channels`` (list), ``POST /api/channels`` (create, disabled unless it says otherwise)."""

    def on_get(self, req, resp):
        cfg = self.fresh()
        resp.media = {"channels": [manage.view(c, self.runtime.types, self.runtime.settings) for c in cfg.channels],
                      "warnings": manage.problems_view(cfg.warnings)}

    def on_post(self, req, resp):
        channel = self.manager.create(self.body(req))
        log.info("channel %s (%s) added through the admin API", channel.id, channel.type)
        self.done(resp, channel, falcon.HTTP_201)
        resp.location = f"/api/channels/{channel.id}"


class Channel(_Admin):
    """``GET``, ``PATCH``, ``DELETE /api/channels/{channel_id}``."""

    def on_get(self, req, resp, channel_id):
        channel = self.fresh().get(channel_id)
        if channel is None:
            raise manage.NotFound(f"no channel {channel_id!r}")
        resp.media = manage.view(channel, self.runtime.types, self.runtime.settings)

    def on_patch(self, req, resp, channel_id):
        self.done(resp, self.manager.update(channel_id, self.body(req)))
        log.info("channel %s changed through the admin API", channel_id)

    def on_delete(self, req, resp, channel_id):
        self.manager.remove(channel_id)
        log.info("channel %s removed through the admin API", channel_id)
        self.runtime.reload_if_changed(every=0)
        resp.status = falcon.HTTP_204


class Test(_Admin):
    """``POST /api/channels/{channel_id}/test``: the plugin's connection test, in its own words."""

    def on_post(self, req, resp, channel_id):
        channel, result = self.manager.test(channel_id)
        self.runtime.reload_if_changed(every=0)
        resp.media = {**manage.result_view(channel_id, result), "channel": manage.view(channel, self.runtime.types, self.runtime.settings)}


class Activate(_Admin):
    def on_post(self, req, resp, channel_id):
        self.done(resp, self.manager.set_enabled(channel_id, True))
        log.info("channel %s activated through the admin API", channel_id)


class Deactivate(_Admin):
    def on_post(self, req, resp, channel_id):
        self.done(resp, self.manager.set_enabled(channel_id, False))
        log.info("channel %s deactivated through the admin API", channel_id)


class Routing(_Admin):
    """``PUT /api/channels/{channel_id}/routing``: ``{"agentId": ..., "dmBehavior": ...}``."""

    def on_put(self, req, resp, channel_id):
        self.done(resp, self.manager.set_routing(channel_id, self.body(req)))


ROUTES = {
    "/api/channel-types": ChannelTypes,
    "/api/agents": Agents,
    "/api/channels": Channels,
    "/api/channels/{channel_id}": Channel,
    "/api/channels/{channel_id}/test": Test,
    "/api/channels/{channel_id}/activate": Activate,
    "/api/channels/{channel_id}/deactivate": Deactivate,
    "/api/channels/{channel_id}/routing": Routing,
}


def _json_error(resp: falcon.Response, status: int, title: str, detail: str, errors=()) -> None:
    resp.status = status
    resp.media = {"title": title, "description": detail, "errors": list(errors)}


def handle_config_error(req, resp, ex: ConfigError, params) -> None:
    _json_error(resp, 422, "channel not saved", "channels.json would be invalid; nothing was changed",
                manage.problems_view(ex.problems))


def handle_not_found(req, resp, ex: manage.NotFound, params) -> None:
    _json_error(resp, 404, "no such channel", str(ex))


def handle_conflict(req, resp, ex: manage.Conflict, params) -> None:
    _json_error(resp, 409, "channel exists", str(ex), [{"channel": "(new)", "path": "id", "message": str(ex),
                                                        "level": "error"}])


def handle_bad_request(req, resp, ex: manage.BadRequest, params) -> None:
    _json_error(resp, 400, "bad request", str(ex))


def handle_key_error(req, resp, ex: SecretKeyError, params) -> None:
    log.error("secret key problem: %s", ex)
    _json_error(resp, 500, "secret key unusable", str(ex))


def install(app: falcon.App, runtime: Runtime, mount) -> None:
    """Mount the admin routes and their error handlers (``mount`` refuses duplicate paths)."""
    for path, cls in ROUTES.items():
        mount(path, cls(runtime))
    app.add_error_handler(ConfigError, handle_config_error)
    app.add_error_handler(manage.NotFound, handle_not_found)
    app.add_error_handler(manage.Conflict, handle_conflict)
    app.add_error_handler(manage.BadRequest, handle_bad_request)
    app.add_error_handler(SecretKeyError, handle_key_error)
