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
    :param env: the whole environment, for plugins' own variables
        (e.g. a provider API URL override).
    """

    channels_path: Path = Path("channels.json")
    data_dir: Path = Path(".sophon")
    public_url: str | None = None
    agent_timeout: float = 60.0
    max_body_bytes: int = DEFAULT_BODY_LIMIT
    sqlite_synchronous: str = "FULL"
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


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or allowed[0]).strip().upper()
    if raw not in allowed:
        raise ValueError(f"{name}={env.get(name)!r} must be one of {', '.join(allowed)}")
    return raw
