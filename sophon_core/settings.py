"""Process settings, read once from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

DEFAULT_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the core reads from the environment.

    :param channels_path: ``SOPHON_CHANNELS`` (default ``./channels.json``).
    :param data_dir: ``SOPHON_DATA_DIR`` (default ``./.sophon``): SQLite state.
    :param public_url: ``SOPHON_PUBLIC_URL``: the base URL providers call, e.g.
        ``https://bot.example.com``; used to check webhook signatures.
    :param agent_timeout: ``SOPHON_AGENT_TIMEOUT`` seconds before an apology is sent.
    :param max_body_bytes: ``SOPHON_MAX_BODY_BYTES``: larger webhooks get 413.
    :param sqlite_synchronous: ``SOPHON_SQLITE_SYNC``: ``FULL`` (default: an
        acknowledged message survives power loss) or ``NORMAL`` (survives process
        crashes only; about twice the webhook throughput).
    :param job_lease: ``SOPHON_JOB_LEASE`` seconds a worker holds a job without renewing
        it; a job of a worker that died runs again after this long (default 30).
    :param retry_base: ``SOPHON_RETRY_BASE``: first retry delay in seconds after a
        temporary send failure; doubles each attempt, with jitter (default 2).
    :param retry_for: ``SOPHON_RETRY_FOR``: give a reply up (recorded as failed) once
        it has been retried for this many seconds (default 900).
    :param pipeline_threads: ``SOPHON_PIPELINE_THREADS`` per worker process (default 8).
    :param media_url_ttl: ``SOPHON_MEDIA_URL_TTL``: seconds a signed link to an outbound
        file (given to the provider to fetch it) stays valid (default 600).
    :param media_retention_days: ``SOPHON_MEDIA_RETENTION_DAYS``: files people sent and
        files agents sent are deleted from ``data_dir/media`` after this many days (default 30).
    :param replies: ``SOPHON_REPLIES``: where the runner threads that answer messages run:
        ``workers`` (default: in every gunicorn worker, next to the webhooks) or ``sender``
        (in one reply-sender process, ``sophon_core/sender.py``, which ``sophon serve``
        starts and sets this for; the workers then only store and acknowledge).
    :param sender_nice: ``SOPHON_SENDER_NICE``: the reply sender's CPU priority: ``0`` to
        ``19``, how much to raise its nice value (default 19), or ``idle`` (Linux's
        ``SCHED_IDLE``: it runs only when no other process wants the CPU).
    :param sender_yield: ``SOPHON_SENDER_YIELD``: ``on`` (default): the reply sender starts
        no new reply while the webhook workers keep the CPUs busy (``sender.LoadGate``);
        ``off``: it answers whatever the load, at its CPU priority.
    :param ack_journal: ``SOPHON_ACK_JOURNAL``: ``on`` (default): a webhook's messages are
        acknowledged once they are in the worker's own journal file, synced, and a thread of
        the worker moves them into the store in batches (``sophon_core/ack_journal.py``);
        ``off``: each webhook stores its messages itself before it answers. Only under
        ``SOPHON_SQLITE_SYNC=FULL`` (under ``NORMAL`` nothing is synced per webhook).
    :param env: the whole environment, for plugins' own variables
        (e.g. a provider API URL override).
    """

    channels_path: Path = Path("channels.json")
    data_dir: Path = Path(".sophon")
    public_url: str | None = None
    agent_timeout: float = 60.0
    max_body_bytes: int = DEFAULT_BODY_LIMIT
    sqlite_synchronous: str = "FULL"
    job_lease: float = 30.0
    retry_base: float = 2.0
    retry_for: float = 900.0
    pipeline_threads: int = 8
    media_url_ttl: float = 600.0
    media_retention_days: float = 30.0
    replies: str = "workers"
    sender_nice: str = "19"
    sender_yield: bool = True
    ack_journal: bool = True
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        public = (env.get("SOPHON_PUBLIC_URL") or "").strip().rstrip("/") or None
        return cls(
            channels_path=Path(env.get("SOPHON_CHANNELS") or "channels.json"),
            data_dir=Path(env.get("SOPHON_DATA_DIR") or ".sophon"),
            public_url=public,
            agent_timeout=_number(env, "SOPHON_AGENT_TIMEOUT", 60.0),
            max_body_bytes=int(_number(env, "SOPHON_MAX_BODY_BYTES", DEFAULT_BODY_LIMIT)),
            sqlite_synchronous=_choice(env, "SOPHON_SQLITE_SYNC", ("FULL", "NORMAL")),
            job_lease=_number(env, "SOPHON_JOB_LEASE", 30.0),
            retry_base=_number(env, "SOPHON_RETRY_BASE", 2.0),
            retry_for=_number(env, "SOPHON_RETRY_FOR", 900.0),
            pipeline_threads=int(_number(env, "SOPHON_PIPELINE_THREADS", 8)),
            media_url_ttl=_number(env, "SOPHON_MEDIA_URL_TTL", 600.0),
            media_retention_days=_number(env, "SOPHON_MEDIA_RETENTION_DAYS", 30.0),
            replies=_choice(env, "SOPHON_REPLIES", ("WORKERS", "SENDER")).lower(),
            sender_nice=sender_nice(env.get("SOPHON_SENDER_NICE")),
            sender_yield=_choice(env, "SOPHON_SENDER_YIELD", ("ON", "OFF")) == "ON",
            ack_journal=_choice(env, "SOPHON_ACK_JOURNAL", ("ON", "OFF")) == "ON",
            env=env,
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be greater than 0")
    return value


def sender_nice(raw: str | None, name: str = "SOPHON_SENDER_NICE") -> str:
    """A nice increment ``0`` to ``19`` (as a string) or ``idle``; unset or empty: ``19``."""
    value = (raw or "19").strip().lower()
    if value == "idle" or (value.isdigit() and int(value) <= 19):
        return value if value == "idle" else str(int(value))
    raise ValueError(f"{name}={raw!r} must be a whole number from 0 to 19 (how much lower the reply sender's CPU "
                     "priority is, added to its nice value; default 19) or idle (it runs only on CPU time nothing else wants)")


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or allowed[0]).strip().upper()
    if raw not in allowed:
        raise ValueError(f"{name}={env.get(name)!r} must be one of {', '.join(allowed)}")
    return raw
