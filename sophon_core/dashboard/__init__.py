"""The dashboard: static HTML, CSS and plain JavaScript (no build step), served by
the same Falcon app at ``/dashboard``. The pages hold no data: the script asks
for the admin token, keeps it in the tab's ``sessionStorage`` and calls the admin
API with ``Authorization: Bearer``. Forms are generated from each channel type's
JSON Schema (``GET /api/channel-types``), so a newly installed type gets its
form with no change here.
"""
from __future__ import annotations

from importlib.resources import files

import falcon

STATIC = files(__package__).joinpath("static")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HEADERS = {
    # Scripts and styles only from this server, no inline code: injected markup cannot run.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _serve(resp: falcon.Response, name: str) -> None:
    suffix = name[name.rfind("."):] if "." in name else ""
    entry = STATIC.joinpath(name)
    if "/" in name or name.startswith(".") or suffix not in TYPES or not entry.is_file():
        raise falcon.HTTPNotFound()
    resp.content_type = TYPES[suffix]
    resp.data = entry.read_bytes()
    resp.set_headers(HEADERS)


class DashboardPage:
    """``GET /dashboard``: the single page."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _serve(resp, "index.html")


class DashboardStatic:
    """``GET /dashboard/static/{name}``: the page's script and stylesheet."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _serve(resp, name)
