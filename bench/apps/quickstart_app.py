"""Reference app "quick-start": Twilio's Flask quick-start for incoming SMS, secured.

The pattern of Twilio's docs ("Receive and reply to SMS in Python" plus "Secure your
Flask app by validating incoming Twilio requests"): a ``validate_twilio_request``
decorator with ``RequestValidator(auth_token).validate(request.url, request.form,
X-Twilio-Signature)``, and a handler that replies with ``MessagingResponse``
(the reply travels in the webhook's answer; nothing is stored). Served by bench/run
under the same gunicorn settings as Sophon:

    gunicorn 'quickstart_app:create_app()'   (with bench/apps on PYTHONPATH)

``BENCH_AUTH_TOKEN``: the Auth Token the requests are signed with.
"""
from __future__ import annotations

import os
from functools import wraps

from flask import Flask, abort, request
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

PATH = "/api/channels/sms/webhook"


def validate_twilio_request(f):
    """Validates that incoming requests genuinely originated from Twilio (Twilio's docs)."""

    @wraps(f)
    def decorated_function(*args, **kwargs):
        validator = RequestValidator(os.environ["BENCH_AUTH_TOKEN"])
        request_valid = validator.validate(request.url, request.form,
                                           request.headers.get("X-TWILIO-SIGNATURE", ""))
        if request_valid:
            return f(*args, **kwargs)
        return abort(403)

    return decorated_function


def create_app() -> Flask:
    app = Flask(__name__)

    @app.route(PATH, methods=["POST"])
    @validate_twilio_request
    def incoming_sms():
        body = request.values.get("Body", None)
        resp = MessagingResponse()
        resp.message(f"You said: {body}")
        return str(resp), 200, {"Content-Type": "text/xml"}

    @app.route("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
