from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the throwaway plugin packages

from dummy_channel import SENT, SENT_EVENT, plugin as dummy_plugin  # noqa: E402
from sophon_core.runtime import Runtime  # noqa: E402
from sophon_core.settings import Settings  # noqa: E402


@pytest.fixture
def write_channels(tmp_path):
    def write(channels):
        path = tmp_path / "channels.json"
        path.write_text(json.dumps({"channels": channels}))
        return path
    return write


@pytest.fixture
def make_runtime(tmp_path, write_channels):
    """Build a Runtime over the dummy plugin only (no entry points but the default agent)."""
    built = []

    def make(channels, extra=(), env=None, **settings):
        path = write_channels(channels)
        s = Settings.from_env({"SOPHON_CHANNELS": str(path), "SOPHON_DATA_DIR": str(tmp_path / "data"),
                               "SOPHON_PLUGINS": "default_agent", **(env or {})})
        for k, v in settings.items():
            object.__setattr__(s, k, v)
        rt = Runtime.build(s, extra_plugins=[dummy_plugin, *extra])
        built.append(rt)
        return rt

    yield make
    for rt in built:
        rt.close()


@pytest.fixture
def sent():
    with SENT_EVENT:
        SENT.clear()
    return SENT
