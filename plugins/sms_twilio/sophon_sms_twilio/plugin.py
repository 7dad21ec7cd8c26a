"""The SMS (Twilio) channel type: the four channel hooks plus its declaration.

Registered through the ``sophon`` entry point ``sms_twilio`` (see pyproject.toml).
Hook implementations are methods of one object so no module-level function
is named like a test.
"""
from __future__ import annotations

import json
import logging
from importlib.resources import files

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException

from sophon_core.errors import Problem, SendError
from sophon_core.hookspecs import hookimpl
from sophon_core.models import ChannelType, SentPart

from . import connection, webhook
from .client import api_base, client_for, retry_after
from .errors import send_error
from .segments import count_segments

TYPE = "sms"
MAX_BODY = 1600  # characters Twilio accepts in one message

# The twilio SDK logs every request and response at INFO: too chatty for a webhook server.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

CONFIG_SCHEMA = json.loads(files(__package__).joinpath("config.schema.json").read_text())


class SmsTwilioPlugin:
    @hookimpl
    def sophon_channel_types(self):
        return [ChannelType(name=TYPE, display_name="SMS (Twilio)", config_schema=CONFIG_SCHEMA,
                            address_field="phoneNumber", max_text_length=MAX_BODY,
                            count_units=count_segments, default_send_rate=1.0, public_url_field="publicUrl",
                            routes={webhook.STATUS_PATH: webhook.StatusCallback()})]

    @hookimpl
    def sophon_commands(self, cli):
        from .cli import sms
        cli.add_command(sms)

    @hookimpl
    def validate_config(self, channel_type, channel_id, config, settings):
        if channel_type != TYPE:
            return None
        if config.get("publicUrl") or settings.public_url:
            return []
        return [Problem(channel_id, "config.publicUrl",
                        "neither SOPHON_PUBLIC_URL nor publicUrl is set: webhook signatures are checked "
                        "against the URL each request names (its Host header). Set SOPHON_PUBLIC_URL to "
                        "the base URL Twilio calls, e.g. https://bot.example.com", level="warning")]

    @hookimpl
    def test_connection(self, channel, settings):
        if channel.type != TYPE:
            return None
        return connection.check(channel, settings)

    @hookimpl
    def handle_inbound(self, channel_type, request, channels, settings):
        if channel_type != TYPE:
            return None
        return webhook.handle(request, channels, settings)

    @hookimpl
    def send(self, channel, message, settings):
        if channel.type != TYPE:
            return None
        cfg = channel.config
        client = client_for(cfg, settings.env)
        try:
            created = client.messages.create(to=message.recipient, from_=cfg["phoneNumber"], body=message.text,
                                             status_callback=webhook.status_callback_url(channel, settings))
        except TwilioRestException as exc:
            raise send_error(exc, to=message.recipient, from_=cfg["phoneNumber"],
                             retry_after=retry_after(client)) from None
        except (requests.RequestException, TwilioException, OSError) as exc:
            # A read timeout may come after Twilio took the message: a retry may duplicate it.
            ambiguous = isinstance(exc, requests.ReadTimeout)
            raise SendError(f"Cannot reach Twilio at {api_base(settings.env)} ({type(exc).__name__}), "
                            "a temporary failure.", ambiguous=ambiguous) from None
        return SentPart(created.sid, message.text, created.status or "queued")


plugin = SmsTwilioPlugin()
