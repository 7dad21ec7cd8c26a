"""The plugin contract. A channel plugin implements these hooks; nothing else.

Hook names are the contract: ``check_pending()`` at start-up refuses a plugin
that implements a hook not listed here (a misspelling). Every call passes
keyword arguments; an implementation may accept only the ones it needs.

Per-channel hooks (``validate_config``, ``test_connection``, ``handle_inbound``,
``send``, and ``fetch_attachment`` for channels that receive files) are *firstresult*: each plugin returns ``None`` for channel types it
does not own, and the owner's answer is the result.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click
    import falcon

    from .agents import Agent
    from .errors import Problem
    from .models import (Attachment, Channel, ChannelType, ConnectionResult, OutboundMessage,
                         SentPart, WebhookReply)
    from .settings import Settings

PROJECT = "sophon"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sophon_channel_types() -> Sequence["ChannelType"]:
    """Declare the channel types this plugin provides.

    :return: ChannelType objects (name, display name, config JSON Schema, ...).
        A type name may be declared by one plugin only; the core refuses to
        start otherwise.
    """


@hookspec
def sophon_agents() -> Sequence["Agent"]:
    """Declare agents that ``routing.agentId`` can name.

    :return: objects with an ``id`` attribute and a
        ``reply(message, history) -> str`` method (see ``sophon_core.agents.Agent``).
    """


@hookspec
def sophon_commands(cli: "click.Group") -> None:
    """Add commands to the ``sophon`` CLI (e.g. ``sophon sms simulate``).

    :param cli: the root click group; call ``cli.group()`` / ``cli.command()``.
    """


@hookspec(firstresult=True)
def validate_config(channel_type: str, channel_id: str, config: Mapping[str, Any],
                    settings: "Settings") -> "list[Problem] | None":
    """Check a channel's ``config`` beyond its JSON Schema.

    Called only after ``config`` passed the type's schema.

    :param channel_type: the ``type`` of the channel; return ``None`` if not yours.
    :param channel_id: for the ``Problem`` objects you return.
    :param config: the channel's config (secrets included; never echo them).
    :param settings: process settings (public URL, environment, ...).
    :return: a list of ``Problem`` (empty when all is well); ``level="warning"``
        problems are shown but do not block start-up. Must not do network I/O.
    """


@hookspec(firstresult=True)
def test_connection(channel: "Channel", settings: "Settings") -> "ConnectionResult | None":
    """Check credentials and provider-side setup of one channel.

    May call the provider (bounded by a timeout). Must not raise for provider
    or network failures: report them as ``("error", "...")`` checks in words
    the user can act on, never containing secrets.

    :return: ``ConnectionResult``; ``None`` if ``channel.type`` is not yours.
    """


@hookspec(firstresult=True)
def handle_inbound(channel_type: str, request: "falcon.Request",
                   channels: Sequence["Channel"], settings: "Settings") -> "WebhookReply | None":
    """Turn one provider webhook (``POST /api/channels/<type>/webhook``) into messages.

    Authenticate the request (e.g. the provider's signature), pick the channel
    it is for among ``channels`` (every configured channel of this type,
    enabled or not) and parse it. Must be fast: the agent runs later, never here.

    :param request: the Falcon request. The core has already read the body
        (at most ``settings.max_body_bytes``, else 413) into ``request.context.body``
        (bytes); do not read the stream again.
    :return: ``WebhookReply`` with the HTTP answer and the ``InboundMessage``
        objects to process; ``None`` if ``channel_type`` is not yours.
    :raises WebhookRejected: with the HTTP status and a reason without secrets
        (403 bad signature, 404 no active channel, 400 missing fields, 415 ...).
    """


@hookspec(firstresult=True)
def send(channel: "Channel", message: "OutboundMessage",
         settings: "Settings") -> "SentPart | None":
    """Deliver one message through ``channel``.

    The core has already split long replies to ``ChannelType.max_text_length``
    and calls ``send`` once per part, in order, recording each part before the
    call and the returned provider id after it. Do not retry here: raise, and
    the core retries with backoff (temporary errors) or records the failure.

    :return: the provider message created; ``None`` if ``channel.type`` is not yours.
    :raises SendError: with words a user can act on, ``code`` (provider error
        code), ``permanent`` (True when retrying cannot help) and ``retry_after``
        (seconds the provider asked to wait, if it said).
    """


@hookspec(firstresult=True)
def fetch_attachment(channel: "Channel", attachment: "Attachment", settings: "Settings") -> "bytes | None":
    """Download one file a sender attached (an ``InboundMessage.attachments`` entry).

    Called outside the webhook request, before the agent runs. Only channels that
    put ``attachments`` in their inbound messages implement it. Enforce the
    provider's rules here: which hosts may be fetched from (never follow a redirect
    elsewhere), size and content-type limits; bound every wait.

    :return: the file's bytes; ``None`` if ``channel.type`` is not yours.
    :raises AttachmentError: the file cannot be had; its words reach the agent (and
        the log) as the ``DroppedAttachment.reason``. Never include secrets.
    """
