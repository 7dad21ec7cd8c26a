"""The Falcon application factory. Serve it with gunicorn:

    gunicorn 'sophon_core.app:create_app()'

or ``sophon serve``. Every installed channel type gets
``POST /api/channels/<type>/webhook`` plus the routes it declares.
"""
from __future__ import annotations

import logging

import falcon

from . import admin, admin_api, logs
from .dashboard import DashboardPage, DashboardStatic
from .media import ROUTE as MEDIA_ROUTE
from .media import MediaResource
from .metrics import MetricsResource
from .openapi import OpenApiResource
from .resources import HealthResource, WebhookResource, handle_rejection
from .errors import WebhookRejected
from .plugins import PluginError
from .runtime import Runtime

log = logging.getLogger("sophon.app")


def create_app(runtime: Runtime | None = None) -> falcon.App:
    """Build the WSGI app. Without ``runtime``, build one from the environment.

    :raises ConfigError: ``channels.json`` is invalid; the server must not start.
    """
    runtime = runtime or Runtime.build()
    token, made = admin.ensure_token(runtime.settings)
    logs.configure(lambda: [token, *secrets_of(runtime)])
    if made:
        log.warning("created the admin token in %s (mode 0600); `sophon admin-token` prints it",
                    admin.token_file(runtime.settings))
    app = falcon.App(middleware=[RuntimeContext(runtime), admin.AdminGuard(token, runtime.settings.public_url)])
    app.req_options.auto_parse_form_urlencoded = False
    app.add_error_handler(WebhookRejected, handle_rejection)
    routes: dict[str, str] = {}
    core = "the core"
    mount(app, routes, "/healthz", HealthResource(runtime), core)
    mount(app, routes, "/metrics", MetricsResource(), core)
    mount(app, routes, "/api/openapi.json", OpenApiResource(), core)
    mount(app, routes, "/dashboard", DashboardPage(), core)
    mount(app, routes, "/dashboard/static/{name}", DashboardStatic(), core)
    mount(app, routes, MEDIA_ROUTE, MediaResource(runtime.media), core)
    admin_api.install(app, runtime, lambda path, resource: mount(app, routes, path, resource, core))
    for ct in runtime.types.values():
        mount(app, routes, ct.webhook_path, WebhookResource(runtime, ct), f"channel type {ct.name!r}")
    for ct in runtime.types.values():
        for path, resource in ct.routes.items():
            mount(app, routes, path, resource, f"channel type {ct.name!r}")
    runtime.pipeline.start()  # also picks up jobs left by a previous run
    active = [c.id for c in runtime.config.channels if c.enabled]
    log.info("serving %d channel type(s) (%s); active channels: %s", len(runtime.types),
             ", ".join(sorted(runtime.types)) or "none", ", ".join(active) or "none")
    for w in runtime.config.warnings:
        log.warning("%s", w)
    return app


class RuntimeContext:
    """Falcon middleware: keeps the config fresh (``channels.json`` edits apply within
    about a second) and gives plugin resources the runtime in ``req.context.runtime``."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.runtime.reload_if_changed()
        req.context.runtime = self.runtime


def mount(app: falcon.App, routes: dict[str, str], path: str, resource: object, owner: str) -> None:
    """Add a route; a path claimed twice is a plugin bug that must not pass silently."""
    if path in routes:
        raise PluginError(f"{owner} declares route {path}, which {routes[path]} already serves")
    routes[path] = owner
    app.add_route(path, resource)


def secrets_of(runtime: Runtime) -> list[str]:
    """Every secret value in the loaded config (fields the type's schema marks writeOnly)."""
    out = []
    for c in runtime.config.channels:
        for name in runtime.types[c.type].secret_fields:
            value = c.config.get(name)
            if isinstance(value, str):
                out.append(value)
    return out
