"""Reference app "floor": the least a Twilio webhook endpoint can do on Falcon.

It checks ``X-Twilio-Signature`` with twilio's ``RequestValidator`` against the URL
the request names (scheme + Host + path, as Twilio signed it) and answers empty
TwiML. Nothing is stored, nothing is answered later. Served by bench/run under the
same gunicorn settings as Sophon:

    gunicorn 'floor_app:create_app()'   (with bench/apps on PYTHONPATH)

``BENCH_AUTH_TOKEN``: the Auth Token the requests are signed with.
"""
from __future__ import annotations

import os
from urllib.parse import parse_qs

import falcon
from twilio.request_validator import RequestValidator

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
PATH = "/api/channels/sms/webhook"


class Form(dict):
    """``name -> [values]`` with the ``getlist`` RequestValidator looks for."""

    def getlist(self, name):
        return self[name]


class Webhook:
    def __init__(self, token: str):
        self.validator = RequestValidator(token)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.bounded_stream.read().decode("utf-8")
        form = Form(parse_qs(body, keep_blank_values=True))
        if not self.validator.validate(req.uri, form, req.get_header("X-Twilio-Signature") or ""):
            raise falcon.HTTPForbidden()
        resp.content_type = "text/xml"
        resp.text = EMPTY_TWIML


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


def create_app() -> falcon.App:
    app = falcon.App()
    app.req_options.auto_parse_form_urlencoded = False
    app.add_route(PATH, Webhook(os.environ["BENCH_AUTH_TOKEN"]))
    app.add_route("/healthz", Health())
    return app
