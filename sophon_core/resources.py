"""Falcon resources of the core. They get the runtime as an argument."""
from __future__ import annotations

import logging
import time

import falcon

from . import metrics, sender
from .errors import WebhookRejected
from .models import ChannelType
from .runtime import Runtime

log = logging.getLogger("sophon.webhook")


class WebhookResource:
    """``POST /api/channels/<type>/webhook``: bound the body, hand it to the plugin, queue."""

    def __init__(self, runtime: Runtime, channel_type: ChannelType):
        self.runtime = runtime
        self.type = channel_type

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        code = 500
        try:
            self._handle(req, resp)
            code = resp.status_code
        except WebhookRejected as exc:
            code = exc.status
            raise
        finally:
            metrics.labelled(metrics.WEBHOOK_SECONDS, self.type.name, str(code)).observe(time.perf_counter() - started)

    def _handle(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        req.context.body = read_body(req, self.runtime.settings.max_body_bytes)
        reply = self.runtime.pm.hook.handle_inbound(
            channel_type=self.type.name, request=req,
            channels=self.runtime.config.of_type(self.type.name), settings=self.runtime.settings)
        if reply is None:
            raise WebhookRejected(500, f"no plugin handles webhooks of type {self.type.name!r}")
        key = f"{self.type.name}:{reply.idempotency_key}" if reply.idempotency_key else None
        self.runtime.pipeline.accept(self.type.name, reply.messages, delivery_key=key)
        resp.status = reply.status
        resp.content_type = reply.content_type
        resp.text = reply.body
        log.debug("webhook %s acknowledged in %.1f ms", self.type.name,
                  (time.perf_counter() - started) * 1000)


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (chunked bodies included).

    For plugin routes too (e.g. a delivery status callback).
    :raises WebhookRejected: 413 when the body is larger.
    """
    if req.content_length is not None and req.content_length > limit:
        raise WebhookRejected(413, f"request body is {req.content_length} bytes; the limit is {limit}")
    if req.content_length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        body = _read_upto(req.stream, limit + 1)  # the WSGI server decodes the chunks
    else:
        body = req.bounded_stream.read(limit + 1)
    if len(body) > limit:
        raise WebhookRejected(413, f"request body is over the {limit}-byte limit")
    return body


def _read_upto(stream, n: int) -> bytes:
    chunks, size = [], 0
    while size < n:
        chunk = stream.read(n - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class HealthResource:
    """``GET /healthz``: the process is up, the store answers, a config is loaded (503 if not);
    under ``SOPHON_REPLIES=sender`` also whether the reply sender runs (``reply_sender``)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            jobs = self.runtime.store.job_states()
            store_ok = True
        except Exception as exc:  # the SQLite file is unreadable, locked for too long, ...
            log.error("health check: the store does not answer: %s", exc)
            jobs, store_ok = {}, False
        settings = self.runtime.settings
        resp.status = 200 if store_ok else 503
        resp.media = {
            "status": "ok" if store_ok else "store unavailable",
            "channel_types": sorted(self.runtime.types),
            "active_channels": [c.id for c in self.runtime.config.channels if c.enabled],
            "jobs_waiting": jobs.get("queued", 0) + jobs.get("running", 0),
            "replies": settings.replies,
        }
        if settings.replies == "sender":  # messages are stored either way; replies wait for the sender
            resp.media["reply_sender"] = "running" if sender.running(settings.data_dir) else "not running"


def handle_rejection(req: falcon.Request, resp: falcon.Response, ex: WebhookRejected, params) -> None:
    """Domain error -> HTTP answer with the reason (which never holds a secret)."""
    log.warning("%s %s rejected with %d: %s", req.method, req.path, ex.status, ex.detail or ex.reason)
    resp.status = ex.status
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = ex.reason + "\n"
