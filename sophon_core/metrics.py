"""Prometheus metrics (``GET /metrics``, text format) through prometheus-client.

Under gunicorn every worker counts for itself: ``sophon serve`` (for its
gunicorn and its reply sender) or else ``gunicorn_conf`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder in ``SOPHON_DATA_DIR`` before the
workers start, and ``/metrics`` adds up what all of them wrote there. In a single process (tests, a plain WSGI server) the
default registry is used.
"""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import falcon
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)

INBOUND = Counter("sophon_inbound_messages", "Inbound messages by what became of them "
                  "(queued, duplicate, rate_limited, blocked, consent)", ["channel", "outcome"])
OUTBOUND = Counter("sophon_outbound_messages", "Outbound messages the provider accepted", ["channel"])
OUTBOUND_UNITS = Counter("sophon_outbound_units", "Billing units (SMS segments) the provider accepted",
                         ["channel"])
SEND_FAILURES = Counter("sophon_send_failures", "Failed provider calls (temporary: retried; permanent: given up)",
                        ["channel", "kind"])
SKIPPED = Counter("sophon_replies_skipped", "Replies not sent (opted_out, over_budget, gave_up)",
                  ["channel", "reason"])
DELIVERY_REPORTS = Counter("sophon_delivery_reports", "Delivery status reports received", ["channel", "status"])
WEBHOOK_SECONDS = Histogram("sophon_webhook_seconds", "Time to acknowledge a provider webhook",
                            ["type", "code"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0))


@functools.lru_cache(maxsize=1024)
def labelled(metric, *labels: str):
    """``metric.labels(*labels)``, the child for those label values, cached: prometheus-client's
    ``labels`` checks and converts its arguments and takes a lock on every call, which on the
    webhook path cost more than the counting itself. The label values are few (channel ids,
    outcomes, status codes); the bound keeps an unexpected variety harmless."""
    return metric.labels(*labels)


def fresh_multiproc_dir(data_dir: Path, owner: int) -> Path:
    """A fresh, empty ``PROMETHEUS_MULTIPROC_DIR``: ``<data_dir>/metrics/<owner pid>``.

    Folders left by owners that are gone (a server that was killed) are removed; the
    owner removes its own at exit (``remove_multiproc_dir``).
    """
    folder = (Path(data_dir) / "metrics" / str(owner)).resolve()
    if folder.parent.is_dir():
        for old in folder.parent.iterdir():
            if old.name.isdigit() and old != folder and not _alive(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def remove_multiproc_dir(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MetricsResource:
    """``GET /metrics``: counters and the webhook latency histogram, every worker summed."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)
