from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from wa_helpers import PLUGINS, PUBLIC, SENDER, WEBHOOK, ForeignHost  # noqa: E402
from sophon_core.runtime import Runtime  # noqa: E402
from sophon_core.settings import Settings  # noqa: E402
from sophon_sms_twilio.sandbox import Sandbox  # noqa: E402


@pytest.fixture
def sandbox():
    with Sandbox() as box:
        yield box


@pytest.fixture
def account(sandbox):
    """A sandbox account whose WhatsApp sender posts to PUBLIC's webhook (tests that run a
    real server point it at that server with ``url=``)."""
    acct = sandbox.add_account(type="Full")
    sandbox.add_number(acct.sid, SENDER, sms_url=PUBLIC + WEBHOOK, whatsapp=True)
    return acct


@pytest.fixture
def wa_env(tmp_path, sandbox):
    def env(channels, **more):
        path = tmp_path / "channels.json"
        path.write_text(json.dumps({"channels": channels}))
        return {"SOPHON_CHANNELS": str(path), "SOPHON_DATA_DIR": str(tmp_path / "data"),
                "SOPHON_PUBLIC_URL": PUBLIC, "SOPHON_TWILIO_API_URL": sandbox.url,
                "SOPHON_PLUGINS": PLUGINS, **more}
    return env


@pytest.fixture
def wa_runtime(wa_env):
    built = []

    def make(channels, extra=(), **more):
        rt = Runtime.build(Settings.from_env(wa_env(channels, **more)), extra_plugins=extra)
        built.append(rt)
        return rt

    yield make
    for rt in built:
        rt.close()


@pytest.fixture
def foreign():
    """A host that is not Twilio; records every request (see ``ForeignHost``)."""
    host = ForeignHost()
    yield host
    host.close()
