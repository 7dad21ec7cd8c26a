"""The WhatsApp (Twilio) channel type: the channel hooks plus its declaration.

Registered through the ``sophon`` entry point ``whatsapp_twilio`` (see pyproject.toml).
Twilio's WhatsApp is its Messages API with ``whatsapp:+E164`` addresses, so the REST
client and the webhook signature check are the SMS plugin's; the rules are WhatsApp's:
1600 characters per message counted as one unit each (no SMS segments), one file per
message, files both ways, and the 24-hour customer service window.
"""
from __future__ import annotations

import json
import logging
from importlib.resources import files

import requests
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException

from sophon_core.errors import Problem, SendError
from sophon_core.hookspecs import hookimpl
from sophon_core.models import ChannelType, SentPart
from sophon_sms_twilio.client import api_base, client_for, retry_after

from . import connection, media, webhook
from .errors import send_error

TYPE = webhook.TYPE
MAX_BODY = 1600  # characters Twilio accepts in one WhatsApp message
MAX_OUTBOUND_BYTES = 16 * 1024 * 1024  # WhatsApp's limit per message; pictures 5 MB
MAX_OUTBOUND_IMAGE_BYTES = 5 * 1024 * 1024

logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

CONFIG_SCHEMA = json.loads(files(__package__).joinpath("config.schema.json").read_text())


class WhatsAppTwilioPlugin:
    @hookimpl
    def sophon_channel_types(self):
        return [ChannelType(name=TYPE, display_name="WhatsApp (Twilio)", config_schema=CONFIG_SCHEMA,
                            address_field="phoneNumber", max_text_length=MAX_BODY, count_units=None,
                            default_send_rate=None, public_url_field="publicUrl", max_attachments=1,
                            routes={webhook.STATUS_PATH: webhook.StatusCallback()})]

    @hookimpl
    def sophon_commands(self, cli):
        from .cli import whatsapp
        cli.add_command(whatsapp)

    @hookimpl
    def validate_config(self, channel_type, channel_id, config, settings):
        if channel_type != TYPE:
            return None
        if config.get("publicUrl") or settings.public_url:
            return []
        return [Problem(channel_id, "config.publicUrl",
                        "neither SOPHON_PUBLIC_URL nor publicUrl is set: webhook signatures are checked against "
                        "the URL each request names, and the agent's files cannot be sent (Twilio fetches them "
                        "from this server). Set SOPHON_PUBLIC_URL, e.g. https://bot.example.com", level="warning")]

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
    def fetch_attachment(self, channel, attachment, settings):
        if channel.type != TYPE:
            return None
        return media.fetch(channel, attachment, settings.env)

    @hookimpl
    def send(self, channel, message, settings):
        if channel.type != TYPE:
            return None
        for att in message.attachments:
            limit = MAX_OUTBOUND_IMAGE_BYTES if att.content_type.startswith("image/") else MAX_OUTBOUND_BYTES
            if att.size is not None and att.size > limit:
                raise SendError(f"The file ({att.content_type}, {att.size} bytes) is larger than WhatsApp "
                                f"allows ({limit // (1024 * 1024)} MB).", permanent=True)
        cfg = channel.config
        to = message.recipient if message.recipient.startswith(webhook.PREFIX) else webhook.PREFIX + message.recipient
        client = client_for(cfg, settings.env)
        try:
            created = client.messages.create(
                to=to, from_=webhook.PREFIX + cfg["phoneNumber"], body=message.text or values.unset,
                media_url=[a.url for a in message.attachments] or values.unset,
                status_callback=webhook.status_callback_url(channel, settings) or values.unset)
        except TwilioRestException as exc:
            raise send_error(exc, to=to, retry_after=retry_after(client)) from None
        except (requests.RequestException, TwilioException, OSError) as exc:
            ambiguous = isinstance(exc, requests.ReadTimeout)
            raise SendError(f"Cannot reach Twilio at {api_base(settings.env)} ({type(exc).__name__}), "
                            "a temporary failure.", ambiguous=ambiguous) from None
        return SentPart(created.sid, message.text, created.status or "queued")


plugin = WhatsAppTwilioPlugin()
